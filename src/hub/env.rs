//! Settings the Hugging Face ecosystem shares through environment variables, read the way
//! Python's `huggingface_hub` reads them so both tools see one cache and one token.

use std::env;
use std::path::PathBuf;

/// The default hub, unless `HF_ENDPOINT` names a mirror.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The hub (or mirror) to download from, without a trailing slash.
pub fn endpoint() -> String {
    var("HF_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    cache.join("huggingface")
}

/// The model cache: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else
/// `$HF_HOME/hub`, with `HF_HOME` defaulted as above.
pub fn cache_dir() -> PathBuf {
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("hub"))
}

/// `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else `$HF_HOME/token` (where
/// `huggingface-cli login` writes it). Never printed.
pub fn token() -> Option<String> {
    if let Some(t) = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let path = var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// `HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    var("HF_HUB_OFFLINE")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A non-empty environment variable.
fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_dir() -> PathBuf {
    var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
