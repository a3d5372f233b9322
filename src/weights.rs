//! Checkpoint files as a candle `VarBuilder`. safetensors tensors are read from disk one at
//! a time, when the model asks for them: candle copies every tensor into its own buffer
//! anyway, so reading on demand keeps one copy of the weights in memory (a memory map, or
//! reading everything first, kept a second copy resident while the model was built).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// Opens checkpoint files: `*.safetensors` (one or several shards) read on demand, or a
/// PyTorch `*.bin` pickle.
pub fn open_weights(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let Some(first) = files.first() else {
        bail!("no weight files given");
    };
    let is_pth = first
        .extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth");
    if is_pth {
        if files.len() > 1 {
            bail!("sharded PyTorch .bin checkpoints are not supported; convert to safetensors");
        }
        return VarBuilder::from_pth(first, dtype, device)
            .with_context(|| format!("cannot read PyTorch weights {}", first.display()));
    }
    let mut backend = SafetensorsFiles::default();
    for path in files {
        // Said as damage, not as whichever tensor runs past the end. (A file from the hub
        // cache was checked when it was fetched; this is for local folders.)
        if let Some(why) = safetensors_damage(path) {
            bail!(
                "{} is damaged ({why}); replace it with a complete copy",
                path.display()
            );
        }
        backend
            .index(path)
            .with_context(|| format!("cannot read safetensors weights {}", path.display()))?;
    }
    Ok(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

/// Where one tensor's bytes are.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    offset: u64,
    len: usize,
}

/// The headers of one or more safetensors files; tensor data stays on disk until asked for.
#[derive(Default)]
struct SafetensorsFiles {
    files: Vec<(PathBuf, File)>,
    entries: HashMap<String, Entry>,
}

/// One entry of a safetensors header.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

impl SafetensorsFiles {
    /// Reads and checks the header of `path`.
    fn index(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact_at(&mut len_bytes, 0)?;
        let header_len = safetensors_header_len(&len_bytes, file_len)?;
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).context("the safetensors header is not valid JSON")?;
        let data_start = 8 + header_len;
        let mut ranges = Vec::with_capacity(header.len());
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let info: TensorInfo = serde_json::from_value(info)
                .with_context(|| format!("tensor {name}: bad header entry"))?;
            let dtype = match info.dtype.as_str() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                "F64" => DType::F64,
                "I64" => DType::I64,
                "U32" => DType::U32,
                "U8" => DType::U8,
                other => bail!("tensor {name} has dtype {other}, which bert-cli cannot read"),
            };
            let [start, end] = info.data_offsets;
            let len = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
            if end < start || end - start != len || data_start + end as u64 > file_len {
                bail!(
                    "tensor {name}: {} bytes at offsets {start}..{end} do not match shape {:?} {dtype:?} in a {file_len}-byte file",
                    end.saturating_sub(start),
                    info.shape
                );
            }
            ranges.push((start, end, name.clone()));
            let entry = Entry {
                file: self.files.len(),
                dtype,
                shape: info.shape,
                offset: data_start + start as u64,
                len,
            };
            self.entries.insert(name, entry);
        }
        // Two tensors on the same bytes read as if they were fine (one of them wrong),
        // so a damaged or doctored header is refused as Python's safetensors refuses it.
        ranges.sort();
        for pair in ranges.windows(2) {
            let ((_, end_a, a), (start_b, _, b)) = (&pair[0], &pair[1]);
            if start_b < end_a {
                bail!("tensors {a} and {b} overlap in the file (bytes {start_b}..{end_a} of the data): the file is damaged; replace it");
            }
        }
        self.files.push((path.to_path_buf(), file));
        Ok(())
    }

    /// Reads one tensor from disk.
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(e) = self.entries.get(name) else {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt());
        };
        let (path, file) = &self.files[e.file];
        // Weights are floating point; an integer tensor where one is expected is a damaged
        // or foreign file, never something to cast silently.
        if dtype.is_float() && !e.dtype.is_float() {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name} in {} is stored as {:?}, not floating point: the file is damaged or not this model's weights",
                path.display(),
                e.dtype
            )));
        }
        let mut raw = vec![0u8; e.len];
        file.read_exact_at(&mut raw, e.offset).map_err(|err| {
            candle_core::Error::Msg(format!(
                "cannot read tensor {name} from {}: {err}",
                path.display()
            ))
        })?;
        Tensor::from_raw_buffer(&raw, e.dtype, &e.shape, dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// One tensor as a safetensors header lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorMeta {
    /// Name in the checkpoint.
    pub name: String,
    /// Number format as the header spells it (`F32`, `F16`, ...).
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// The JSON header's length from a safetensors file's first 8 bytes, checked against the
/// file's size (`total`).
pub fn safetensors_header_len(first: &[u8], total: u64) -> Result<u64> {
    let bytes: [u8; 8] = first
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!("not a safetensors file: {total} bytes, too short for a header")
        })?;
    let n = u64::from_le_bytes(bytes);
    if n > total.saturating_sub(8) || n > 100 << 20 {
        bail!("not a safetensors file: header length {n} does not fit in {total} bytes");
    }
    Ok(n)
}

/// What is wrong with a safetensors file, if anything, from its size and header alone:
/// too short for a header, a header longer than the file, or tensor data that would run
/// past its end (a file cut short). Reads 8 bytes and the header.
pub fn safetensors_damage(path: &Path) -> Option<String> {
    let check = || -> std::result::Result<(), String> {
        let file = File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
        let total = file.metadata().map_err(|e| e.to_string())?.len();
        if total < 8 {
            return Err(format!("{total} bytes: too short for a safetensors header"));
        }
        let mut first = [0u8; 8];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| e.to_string())?;
        let n = safetensors_header_len(&first, total).map_err(|e| format!("{e}"))?;
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| e.to_string())?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| format!("its header is not valid JSON ({e})"))?;
        let end = header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0);
        if 8 + n + end > total {
            return Err(format!(
                "{total} bytes, but its header places tensor data up to byte {}: the file was cut short",
                8 + n + end
            ));
        }
        Ok(())
    };
    check().err()
}

/// The tensors a safetensors JSON header lists, in name order.
pub fn safetensors_tensors(header: &[u8]) -> Result<Vec<TensorMeta>> {
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).context("the safetensors header is not valid JSON")?;
    let mut tensors = header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, info)| {
            let info: TensorInfo = serde_json::from_value(info)
                .with_context(|| format!("tensor {name}: bad header entry"))?;
            Ok(TensorMeta {
                name,
                dtype: info.dtype,
                shape: info.shape,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// The tensors of a local safetensors file, reading only its header.
pub fn local_safetensors_tensors(path: &Path) -> Result<Vec<TensorMeta>> {
    let read = || -> Result<Vec<TensorMeta>> {
        let file = File::open(path)?;
        let total = file.metadata()?.len();
        let mut first = [0u8; 8];
        file.read_exact_at(&mut first, 0)
            .context("too short for a header")?;
        let n = safetensors_header_len(&first, total)?;
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)?;
        safetensors_tensors(&header)
    };
    read().with_context(|| format!("cannot read the header of {}", path.display()))
}
