//! Resolves a model name to files on disk: a local folder in Hugging Face layout, or a
//! repo id fetched through `hf-hub` into the standard Hugging Face cache (shared with
//! Python tools), with offline use, tokens, mirrors and clear errors.

pub mod env;
mod progress;
mod remote;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use remote::{Miss, Remote, RemoteOptions};

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
    pub tokenizer: TokenizerPaths,
    /// The repo's folder in the Hugging Face cache (`None` for a local folder).
    pub cache_dir: Option<PathBuf>,
}

impl ModelFiles {
    /// Every file, in the order they are used.
    pub fn all(&self) -> Vec<&Path> {
        let mut files = vec![self.config.as_path()];
        files.extend(self.weights.iter().map(PathBuf::as_path));
        match &self.tokenizer {
            TokenizerPaths::Json(p) => files.push(p),
            TokenizerPaths::Vocab(v, c) => {
                files.push(v);
                files.extend(c.as_deref());
            }
        }
        files
    }
}

/// `tokenizer.json`, or the `vocab.txt` it is rebuilt from.
#[derive(Debug, Clone)]
pub enum TokenizerPaths {
    /// A fast-tokenizer file.
    Json(PathBuf),
    /// A WordPiece vocabulary and, when present, `tokenizer_config.json`.
    Vocab(PathBuf, Option<PathBuf>),
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
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            offline: false,
            progress: false,
            warn: true,
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
    if model.starts_with(['.', '/', '~']) || model.matches('/').count() > 1 || path.exists() {
        bail!("model folder {model} does not exist (or is not a folder); give a folder in Hugging Face layout or a repo id such as owner/name");
    }
    let remote = Remote::new(
        model,
        &opts.revision,
        &RemoteOptions {
            offline: opts.offline || env::offline(),
            progress: opts.progress,
        },
    )?;
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
    let tokenizer = match (have("tokenizer.json"), have("vocab.txt")) {
        (Some(j), _) => TokenizerPaths::Json(j),
        (None, Some(v)) => TokenizerPaths::Vocab(v, have("tokenizer_config.json")),
        (None, None) => bail!(
            "{} has no tokenizer: expected tokenizer.json or vocab.txt",
            dir.display()
        ),
    };
    Ok(ModelFiles {
        id: dir.display().to_string(),
        config,
        weights,
        tokenizer,
        cache_dir: None,
    })
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
    let tokenizer = match first_of(remote, &["tokenizer.json", "vocab.txt"])? {
        (name, p) if name == "tokenizer.json" => TokenizerPaths::Json(p),
        (_, p) => TokenizerPaths::Vocab(p, remote.fetch("tokenizer_config.json").ok()),
    };
    Ok(ModelFiles {
        id: id.to_string(),
        config,
        weights,
        tokenizer,
        cache_dir: Some(remote.cache_dir().to_path_buf()),
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
