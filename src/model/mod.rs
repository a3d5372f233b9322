//! The BERT sequence classifier, built from candle-nn ops as a tree of small structs,
//! each with `load(vb, cfg)` and `forward`. Weight names are the checkpoint's own.

pub mod attention;
pub mod classifier;
pub mod config;
pub mod embeddings;
pub mod encoder;
mod ops;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use classifier::{Head, HeadPolicy};
use config::Config;
use embeddings::Embeddings;
use encoder::Encoder;

/// Padding bias added to attention scores before softmax. Large enough that
/// `exp` underflows to exactly 0, small enough to stay finite after adding a score.
const MASK_BIAS: f64 = -1.0e9;

/// One padded batch, ready for the model: every tensor is `[batch, seq]` u32.
pub struct Batch {
    /// Token ids, padded with 0.
    pub ids: Tensor,
    /// Token type (segment) ids.
    pub type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub mask: Tensor,
}

/// What a forward pass returns.
pub struct Output {
    /// `[batch, num_labels]` f32 logits.
    pub logits: Tensor,
    /// Per layer `[batch, heads, seq, seq]` f32 probabilities; empty unless asked for.
    pub attentions: Vec<Tensor>,
}

/// `BertForSequenceClassification`: embeddings, encoder, pooler, classifier.
pub struct BertClassifier {
    embeddings: Embeddings,
    encoder: Encoder,
    head: Head,
    /// The architecture this model was built from.
    pub config: Config,
}

impl BertClassifier {
    /// Builds the model from a checkpoint, with or without the `bert.` prefix.
    pub fn load(vb: VarBuilder, cfg: &Config, policy: HeadPolicy) -> Result<Self> {
        let probe = "embeddings.word_embeddings.weight";
        let bert = if vb.contains_tensor(&format!("bert.{probe}")) {
            vb.pp("bert")
        } else if vb.contains_tensor(probe) {
            vb.clone()
        } else {
            bail!("no BERT encoder weights: expected tensor {probe} (with or without the \"bert.\" prefix)");
        };
        Ok(Self {
            embeddings: Embeddings::load(bert.pp("embeddings"), cfg)?,
            encoder: Encoder::load(bert.pp("encoder"), cfg)?,
            head: Head::load(vb, bert, cfg, policy)?,
            config: cfg.clone(),
        })
    }

    /// Number of labels the head scores.
    pub fn num_labels(&self) -> usize {
        self.head.num_labels
    }

    /// Whether the classification head came from the checkpoint (false: seeded).
    pub fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    /// Classifies a padded batch; `keep_attention` also returns attention probabilities.
    pub fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let (b, t) = batch.ids.dims2()?;
        let mask_bias =
            ((batch.mask.to_dtype(DType::F32)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, t))?;
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        let (hidden, attentions) = self.encoder.forward(x, &mask_bias, keep_attention)?;
        let logits = self.head.forward(&hidden)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }
}

/// Opens checkpoint files: `*.safetensors` are memory-mapped, `*.bin` read as PyTorch pickles.
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
    let mut tensors = HashMap::new();
    for file in files {
        read_safetensors(file, device, &mut tensors)
            .with_context(|| format!("cannot read safetensors weights {}", file.display()))?;
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

/// Reads every tensor of a safetensors file with positioned reads. Not a memory map:
/// candle copies each tensor out of a mapping anyway, so mapping the file would only keep
/// a second copy of the weights resident while the model loads (twice the peak memory).
fn read_safetensors(path: &Path, device: &Device, out: &mut HashMap<String, Tensor>) -> Result<()> {
    use std::os::unix::fs::FileExt;

    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
        bail!(
            "not a safetensors file: header length {header_len} does not fit in {file_len} bytes"
        );
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).context("the safetensors header is not valid JSON")?;
    let data_start = 8 + header_len;
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
        let expected = info.shape.iter().product::<usize>() * dtype.size_in_bytes();
        if end < start || end - start != expected || data_start + end as u64 > file_len {
            bail!(
                "tensor {name}: {} bytes at offsets {start}..{end} do not match shape {:?} {dtype:?} in a {file_len}-byte file",
                end.saturating_sub(start),
                info.shape
            );
        }
        let mut raw = vec![0u8; expected];
        file.read_exact_at(&mut raw, data_start + start as u64)?;
        let tensor = Tensor::from_raw_buffer(&raw, dtype, &info.shape, device)?;
        out.insert(name, tensor);
    }
    Ok(())
}

/// One entry of a safetensors header.
#[derive(serde::Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// A `Linear` named `weight`/`bias` under `vb`, with its shape checked.
fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Ok(candle_nn::linear(in_dim, out_dim, vb)?)
}

/// A dense layer applied to `[batch, seq, in]` as one `[batch * seq, in]` matrix product:
/// one large GEMM instead of `batch` small ones (what `candle_nn::Linear` does for 3-D input).
pub(crate) struct Dense {
    /// `[in, out]`, contiguous: the checkpoint's `[out, in]` transposed once at load, so
    /// the GEMM reads it row-major and need not repack it on every call (which cost more
    /// than the arithmetic for one short sentence).
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    /// From a checkpoint-layout `[out, in]` weight and its `[out]` bias.
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// `weight` `[out, in]` and `bias` `[out]` under `vb`, shapes checked.
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
        )
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let y = x
            .reshape((b * t, i))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?;
        Ok(y.reshape((b, t, ()))?)
    }
}

/// A LayerNorm stored as `weight`/`bias` or, in old TensorFlow ports, `gamma`/`beta`.
fn layer_norm(vb: VarBuilder, cfg: &Config) -> Result<LayerNorm> {
    let h = cfg.hidden_size;
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        (vb.get(h, "weight")?, vb.get(h, "bias")?)
    } else {
        (vb.get(h, "gamma")?, vb.get(h, "beta")?)
    };
    Ok(LayerNorm::new(w, b, cfg.layer_norm_eps))
}
