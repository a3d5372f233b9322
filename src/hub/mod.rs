//! Resolves a model name to files on disk: a local folder in Hugging Face layout, or a
//! repo id fetched through `hf-hub` into the standard Hugging Face cache (shared with
//! Python tools), with offline use, tokens, mirrors and clear errors.

pub mod env;
mod progress;
mod remote;
mod verify;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use remote::{Miss, Remote, RemoteOptions};

use crate::tokenize::TokenizerFiles;

/// The files a classifier needs, wherever they came from.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user called the model (repo id or folder), for messages and dumps.
    pub id: String,
    /// `config.json`.
    pub config: PathBuf,
    /// One `.safetensors` or `.bin` file, or every shard of a sharded checkpoint.
    pub weights: Vec<PathBuf>,
    /// The tokenizer.
    pub tokenizer: TokenizerFiles,
    /// The repo's folder in the Hugging Face cache (`None` for a local folder).
    pub cache_dir: Option<PathBuf>,
}

impl ModelFiles {
    /// Every file, in the order they are used.
    pub fn all(&self) -> Vec<&Path> {
        let mut files = vec![self.config.as_path()];
        files.extend(self.weights.iter().map(PathBuf::as_path));
        files.extend(self.tokenizer.files());
        files
    }
}

/// Tokenizer files in the order they are preferred (`merges.txt` goes with `vocab.json`).
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "vocab.json"];

/// SentencePiece models (XLM-R, CamemBERT, DeBERTa-v3), which only a `tokenizer.json`
/// beside them makes usable here.
const SENTENCEPIECE_FILES: [&str; 2] = ["sentencepiece.bpe.model", "spm.model"];

/// The error for a model without a tokenizer bert-cli can read, naming what it has.
fn no_tokenizer(what: &str, sentencepiece: Option<&str>) -> anyhow::Error {
    match sentencepiece {
        Some(spm) => anyhow!(
            "{what} has only a SentencePiece tokenizer ({spm}); bert-cli needs its tokenizer.json \
             (convert it once with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(folder))"
        ),
        None => anyhow!(
            "{what} has no tokenizer: expected tokenizer.json, vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE)"
        ),
    }
}

/// How to get files from the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Branch, tag or commit.
    pub revision: String,
    /// Use only the cache (also implied by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Say on stderr when the cache stood in for an unreachable network.
    pub warn: bool,
    /// Fetch every file again (`download --force`).
    pub force: bool,
    /// Check cached files' content against their ETags (`download`).
    pub verify_cached: bool,
}

impl HubOptions {
    /// Whether to use only the cache: `--offline` or `HF_HUB_OFFLINE`.
    pub fn is_offline(&self) -> bool {
        self.offline || env::offline()
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            offline: false,
            progress: false,
            warn: true,
            force: false,
            verify_cached: false,
        }
    }
}

/// Weight files in the order they are preferred.
const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
];

/// A folder path or a repo id.
pub fn resolve(model: &str, opts: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return from_folder(path);
    }
    let remote = remote_for(model, opts)?;
    let files = from_hub(model, &remote)?;
    if let Some(reason) = remote.fell_back_to_cache() {
        if opts.warn {
            eprintln!("bert-cli: warning: the hub is unreachable ({reason}); using the cached files of {model}");
        }
    }
    Ok(files)
}

/// Reads a local folder, choosing files in the same order as the hub path.
fn from_folder(dir: &Path) -> Result<ModelFiles> {
    let have = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let config =
        have("config.json").ok_or_else(|| anyhow!("{} has no config.json", dir.display()))?;
    let weights = match WEIGHT_FILES.iter().find_map(|f| have(f)) {
        Some(p) if p.extension().is_some_and(|e| e == "json") => {
            shards(&p)?.into_iter().map(|s| dir.join(s)).collect()
        }
        Some(p) => vec![p],
        None => bail!(
            "{} has no weights: expected one of {}",
            dir.display(),
            WEIGHT_FILES.join(", ")
        ),
    };
    let config_file = have("tokenizer_config.json");
    let tokenizer = if let Some(j) = have("tokenizer.json") {
        TokenizerFiles::Json(j)
    } else if let Some(vocab) = have("vocab.txt") {
        TokenizerFiles::Vocab {
            vocab,
            config: config_file,
        }
    } else if let (Some(vocab), Some(merges)) = (have("vocab.json"), have("merges.txt")) {
        TokenizerFiles::Bpe {
            vocab,
            merges,
            config: config_file,
        }
    } else {
        let spm = SENTENCEPIECE_FILES.iter().find(|f| have(f).is_some());
        return Err(no_tokenizer(&dir.display().to_string(), spm.copied()));
    };
    Ok(ModelFiles {
        id: dir.display().to_string(),
        config,
        weights,
        tokenizer,
        cache_dir: None,
    })
}

/// The hub repo `model` names; a path-like name that is not a folder is an error.
fn remote_for(model: &str, opts: &HubOptions) -> Result<Remote> {
    if model.trim().is_empty() {
        bail!("the model name is empty; give a repo id such as owner/name or a model folder");
    }
    if model.starts_with(['.', '/', '~'])
        || model.matches('/').count() > 1
        || Path::new(model).exists()
    {
        bail!("model folder {model} does not exist (or is not a folder); give a folder in Hugging Face layout or a repo id such as owner/name");
    }
    Remote::new(
        model,
        &opts.revision,
        &RemoteOptions {
            offline: opts.is_offline(),
            progress: opts.progress,
            force: opts.force,
            verify_cached: opts.verify_cached,
            warn: opts.warn,
        },
    )
}

/// The first of `candidates` the repo has.
fn first_of(remote: &Remote, candidates: &[&str]) -> Result<(String, PathBuf)> {
    let mut first_miss = None;
    for name in candidates {
        match remote.fetch(name) {
            Ok(p) => return Ok((name.to_string(), p)),
            Err(Miss::Fatal(e)) => return Err(e),
            Err(Miss::Absent(e)) => {
                first_miss.get_or_insert(e);
            }
        }
    }
    let e = first_miss.unwrap_or_else(|| anyhow!("no candidates"));
    if candidates.len() == 1 {
        return Err(e);
    }
    Err(e.context(format!("none of {} could be had", candidates.join(", "))))
}

/// One file that must exist.
fn required(remote: &Remote, name: &str) -> Result<PathBuf> {
    first_of(remote, &[name]).map(|(_, p)| p)
}

/// Fetches (or finds in the cache) config, weights and tokenizer.
fn from_hub(id: &str, remote: &Remote) -> Result<ModelFiles> {
    let config = required(remote, "config.json")?;
    let (name, path) = first_of(remote, &WEIGHT_FILES)?;
    let weights = if name.ends_with(".json") {
        shards(&path)?
            .iter()
            .map(|s| required(remote, s))
            .collect::<Result<_>>()?
    } else {
        vec![path]
    };
    let tokenizer = hub_tokenizer(id, remote)?;
    Ok(ModelFiles {
        id: id.to_string(),
        config,
        weights,
        tokenizer,
        cache_dir: Some(remote.cache_dir().to_path_buf()),
    })
}

/// The tokenizer files of a hub repo: `tokenizer.json`, else WordPiece or BPE files.
fn hub_tokenizer(id: &str, remote: &Remote) -> Result<TokenizerFiles> {
    Ok(match first_of(remote, &TOKENIZER_FILES) {
        Ok((name, p)) if name == "tokenizer.json" => TokenizerFiles::Json(p),
        Ok((name, vocab)) if name == "vocab.txt" => TokenizerFiles::Vocab {
            vocab,
            config: remote.fetch("tokenizer_config.json").ok(),
        },
        Ok((_, vocab)) => TokenizerFiles::Bpe {
            vocab,
            merges: required(remote, "merges.txt")?,
            config: remote.fetch("tokenizer_config.json").ok(),
        },
        Err(e) => return Err(e.context(no_tokenizer(id, None))),
    })
}

/// Shard file names listed in a `model.safetensors.index.json`, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("invalid shard index {}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?;
    let mut files: Vec<String> = Vec::new();
    for f in map.values().filter_map(|v| v.as_str()) {
        if f.contains("..") || f.starts_with('/') {
            bail!("{} names a shard outside the model: {f}", index.display());
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    Ok(files)
}

/// A model described without downloading its weights (`bert-cli info`).
#[derive(Debug, Clone)]
pub struct Peek {
    /// Repo id or folder.
    pub id: String,
    /// `config.json`.
    pub config: PathBuf,
    /// The tokenizer's files.
    pub tokenizer: TokenizerFiles,
    /// The repo's folder in the cache (hub models only).
    pub cache_dir: Option<PathBuf>,
    /// The weights files.
    pub weights: Vec<WeightsFile>,
}

/// One weights file, local or still on the hub.
#[derive(Debug, Clone)]
pub struct WeightsFile {
    /// Its name in the repo or folder.
    pub name: String,
    /// Where it is on disk, if it is.
    pub local: Option<PathBuf>,
    /// Its size in bytes.
    pub size: u64,
    /// The tensors its safetensors header lists; `None` for `pytorch_model.bin`.
    pub tensors: Option<Vec<crate::weights::TensorMeta>>,
}

/// Config and tokenizer of `model` (fetched if needed) and the weights' headers: from the
/// files when they are local or cached, else by HTTP range requests for the header bytes.
pub fn peek(model: &str, opts: &HubOptions) -> Result<Peek> {
    let path = Path::new(model);
    if path.is_dir() {
        let files = from_folder(path)?;
        let tokenizer = files.tokenizer;
        let weights = files
            .weights
            .iter()
            .map(|p| {
                local_weights(
                    p,
                    p.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                )
            })
            .collect::<Result<_>>()?;
        return Ok(Peek {
            id: files.id,
            config: files.config,
            tokenizer,
            cache_dir: None,
            weights,
        });
    }
    let remote = remote_for(model, opts)?;
    let config = required(&remote, "config.json")?;
    let tokenizer = hub_tokenizer(model, &remote)?;
    let weights = remote_weights(&remote)?;
    Ok(Peek {
        id: model.to_string(),
        config,
        tokenizer,
        cache_dir: Some(remote.cache_dir().to_path_buf()),
        weights,
    })
}

/// A weights file on disk: its size, and its header's tensors if it is safetensors.
fn local_weights(path: &Path, name: String) -> Result<WeightsFile> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let tensors = if name.ends_with(".safetensors") {
        Some(crate::weights::local_safetensors_tensors(path)?)
    } else {
        None
    };
    Ok(WeightsFile {
        name,
        local: Some(path.to_path_buf()),
        size,
        tensors,
    })
}

/// The first weights candidate the repo has, cached or read remotely by its header.
fn remote_weights(remote: &Remote) -> Result<Vec<WeightsFile>> {
    let mut first_miss = None;
    for name in WEIGHT_FILES {
        let found = if let Some(p) = remote.cached_file(name) {
            if name.ends_with(".json") {
                remote_shards(remote, &p)
            } else {
                local_weights(&p, name.to_string()).map(|w| vec![w])
            }
        } else if name.ends_with(".json") {
            match remote.fetch(name) {
                Ok(index) => remote_shards(remote, &index),
                Err(Miss::Fatal(e)) => return Err(e),
                Err(Miss::Absent(e)) => {
                    first_miss.get_or_insert(e);
                    continue;
                }
            }
        } else {
            match remote_header(remote, name) {
                Ok(w) => Ok(vec![w]),
                Err(Miss::Fatal(e)) => return Err(e),
                Err(Miss::Absent(e)) => {
                    first_miss.get_or_insert(e);
                    continue;
                }
            }
        };
        return found;
    }
    let e = first_miss.unwrap_or_else(|| anyhow!("no weights"));
    Err(e.context(format!("none of {} could be had", WEIGHT_FILES.join(", "))))
}

/// Each shard of an index, cached or by its header.
fn remote_shards(remote: &Remote, index: &Path) -> Result<Vec<WeightsFile>> {
    shards(index)?
        .into_iter()
        .map(|s| match remote.cached_file(&s) {
            Some(p) => local_weights(&p, s),
            None => remote_header(remote, &s).map_err(|m| match m {
                Miss::Absent(e) | Miss::Fatal(e) => e,
            }),
        })
        .collect()
}

/// A remote file's size and, for safetensors, its header: two small range requests.
fn remote_header(remote: &Remote, name: &str) -> Result<WeightsFile, Miss> {
    let (first, total) = remote.read_range(name, 0, 7)?;
    let tensors = if name.ends_with(".safetensors") {
        let bad = |e: anyhow::Error| Miss::Fatal(e.context(format!("{name} of the hub repo")));
        let n = crate::weights::safetensors_header_len(&first, total).map_err(bad)?;
        let header = match n {
            0 => Vec::new(),
            n => remote.read_range(name, 8, 8 + n - 1)?.0,
        };
        Some(crate::weights::safetensors_tensors(&header).map_err(bad)?)
    } else {
        None
    };
    Ok(WeightsFile {
        name: name.to_string(),
        local: None,
        size: total,
        tensors,
    })
}
