//! Resolves a model name to files on disk: a local folder in Hugging Face layout, or a
//! repo id fetched through `hf-hub` into the standard Hugging Face cache.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

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
}

/// `tokenizer.json`, or the `vocab.txt` it is rebuilt from.
#[derive(Debug, Clone)]
pub enum TokenizerPaths {
    /// A fast-tokenizer file.
    Json(PathBuf),
    /// A WordPiece vocabulary and, when present, `tokenizer_config.json`.
    Vocab(PathBuf, Option<PathBuf>),
}

/// Weight files in the order they are preferred.
const WEIGHT_FILES: [&str; 3] = [
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
];

/// A folder path or a repo id; `revision` is a branch, tag or commit (hub only).
pub fn resolve(model: &str, revision: &str, progress: bool) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return from_folder(path);
    }
    if model.starts_with(['.', '/', '~']) || model.matches('/').count() > 1 || path.exists() {
        bail!("model folder {model} does not exist (or is not a folder); give a folder in Hugging Face layout or a repo id such as owner/name");
    }
    from_hub(model, revision, progress)
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
    })
}

/// Fetches through hf-hub, which honours `HF_HOME`, `HF_ENDPOINT` and the token file.
fn from_hub(id: &str, revision: &str, progress: bool) -> Result<ModelFiles> {
    let api = ApiBuilder::from_env()
        .with_progress(progress)
        .build()
        .context("cannot set up the Hugging Face client")?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let get = |file: &str| -> Result<PathBuf> {
        repo.get(file)
            .map_err(|e| anyhow!("cannot fetch {file} from {id} (revision {revision}): {e}"))
    };
    let config = get("config.json")?;
    let weights = fetch_weights(&repo, id, revision)?;
    let tokenizer = match get("tokenizer.json") {
        Ok(p) => TokenizerPaths::Json(p),
        Err(json_err) => match get("vocab.txt") {
            Ok(v) => TokenizerPaths::Vocab(v, get("tokenizer_config.json").ok()),
            Err(_) => {
                return Err(json_err.context("the repo has neither tokenizer.json nor vocab.txt"))
            }
        },
    };
    Ok(ModelFiles {
        id: id.to_string(),
        config,
        weights,
        tokenizer,
    })
}

/// The first weight format the repo has, with every shard of a sharded checkpoint.
fn fetch_weights(repo: &ApiRepo, id: &str, revision: &str) -> Result<Vec<PathBuf>> {
    let mut first_err = None;
    for file in WEIGHT_FILES {
        match repo.get(file) {
            Ok(p) if file.ends_with(".json") => {
                return shards(&p)?
                    .iter()
                    .map(|s| {
                        repo.get(s).map_err(|e| {
                            anyhow!("cannot fetch shard {s} from {id} (revision {revision}): {e}")
                        })
                    })
                    .collect();
            }
            Ok(p) => return Ok(vec![p]),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let e = first_err.map(|e| e.to_string()).unwrap_or_default();
    bail!(
        "cannot fetch weights from {id} (revision {revision}): tried {}: {e}",
        WEIGHT_FILES.join(", ")
    )
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
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    Ok(files)
}
