//! `bert-cli info`: a model's architecture, labels and files, without its weights: from
//! the hub only the config, the tokenizer and the weights' safetensors header are fetched.

use std::io::{self, Write};

use anyhow::Result;
use serde_json::json;

use super::{file_size, human_size, EXIT_OK};
use bert_cli::cli::{InfoArgs, InfoFormat};
use bert_cli::hub::{self, Peek};
use bert_cli::models;

/// Describes the model.
pub fn run(args: InfoArgs) -> Result<u8> {
    let model = args.model;
    let peek = hub::peek(&model.model, &model.hub.options(model.quiet))?;
    let cfg = models::read_config(&peek.config)?;
    let (family, _) = models::family(&cfg.model_type)?;
    check_files(&peek, &cfg)?;
    let head = head_state(&peek, &format!("{}.weight", family.head))?;
    let params: Option<usize> = peek
        .weights
        .iter()
        .map(|w| {
            w.tensors.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| t.shape.iter().product::<usize>())
                    .sum::<usize>()
            })
        })
        .sum();
    let mut dtypes: Vec<&str> = peek
        .weights
        .iter()
        .flat_map(|w| w.tensors.iter().flatten().map(|t| t.dtype.as_str()))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    let mut out = io::stdout().lock();
    match args.format {
        InfoFormat::Json => {
            let files: Vec<_> = local_files(&peek)
                .into_iter()
                .map(|(path, size)| json!({"path": path, "size": size}))
                .collect();
            let weights: Vec<_> = peek
                .weights
                .iter()
                .map(|w| {
                    json!({"file": w.name, "size": w.size, "downloaded": w.local.is_some(),
                           "tensors": w.tensors.as_ref().map(Vec::len)})
                })
                .collect();
            let obj = json!({
                "model": peek.id,
                "cache": peek.cache_dir,
                "architecture": cfg.family_name,
                "model_type": cfg.model_type,
                "layers": cfg.num_layers,
                "heads": cfg.num_heads,
                "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size,
                "activation": cfg.hidden_act.to_string(),
                "max_length": cfg.max_tokens(),
                "vocab_size": cfg.vocab_size,
                "head": head.map(|trained| if trained { "trained" } else { "none" }),
                "labels": cfg.labels,
                "multi_label": cfg.multi_label,
                "parameters": params,
                "dtypes": dtypes,
                "weights": weights,
                "files": files,
            });
            serde_json::to_writer_pretty(&mut out, &obj)?;
            writeln!(out)?;
        }
        InfoFormat::Human => {
            writeln!(out, "model:        {}", peek.id)?;
            if let Some(dir) = &peek.cache_dir {
                writeln!(out, "cache:        {}", dir.display())?;
            }
            writeln!(
                out,
                "architecture: {} (model_type {}), {} layers, {} heads, hidden size {}, feed-forward {}, {}",
                cfg.family_name,
                cfg.model_type,
                cfg.num_layers,
                cfg.num_heads,
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.hidden_act
            )?;
            writeln!(out, "max length:   {} tokens", cfg.max_tokens())?;
            writeln!(out, "vocabulary:   {} tokens", cfg.vocab_size)?;
            let head = match head {
                Some(true) => "trained classifier",
                Some(false) => {
                    "none (a bare encoder: classify refuses it without --allow-untrained-head)"
                }
                None => "unknown (pytorch_model.bin is not read without downloading it)",
            };
            writeln!(out, "head:         {head}")?;
            writeln!(
                out,
                "labels:       {}{}",
                cfg.labels.join(", "),
                if cfg.multi_label {
                    " (multi-label, sigmoid)"
                } else {
                    ""
                }
            )?;
            if let Some(n) = params {
                writeln!(
                    out,
                    "parameters:   {:.1}M ({})",
                    n as f64 / 1e6,
                    dtypes.join(", ")
                )?;
            }
            writeln!(out, "files:")?;
            let mut total = 0;
            for (path, size) in local_files(&peek) {
                total += size;
                writeln!(out, "  {:>10}  {path}", human_size(size))?;
            }
            for w in peek.weights.iter().filter(|w| w.local.is_none()) {
                total += w.size;
                writeln!(
                    out,
                    "  {:>10}  {} (on the hub, not downloaded: `bert-cli download {}` fetches it)",
                    human_size(w.size),
                    w.name,
                    peek.id
                )?;
            }
            writeln!(out, "  {:>10}  total", human_size(total))?;
        }
    }
    Ok(EXIT_OK)
}

/// Whether a trained head (its output layer's `head` tensor) is there; `None` when no
/// header says (remote pytorch_model.bin).
fn head_state(peek: &Peek, head: &str) -> Result<Option<bool>> {
    let mut unknown = false;
    for w in &peek.weights {
        match (&w.tensors, &w.local) {
            (Some(ts), _) => {
                if ts.iter().any(|t| t.name == head) {
                    return Ok(Some(true));
                }
            }
            (None, Some(path)) => {
                let vb = bert_cli::weights::open_weights(
                    std::slice::from_ref(path),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )?;
                if vb.contains_tensor(head) {
                    return Ok(Some(true));
                }
            }
            (None, None) => unknown = true,
        }
    }
    Ok((!unknown).then_some(false))
}

/// What classify would refuse, refused here too, so that `info` can serve as a health
/// check: a safetensors file cut short, a tokenizer that does not load, or one whose ids
/// run past the embedding table.
fn check_files(peek: &Peek, cfg: &models::config::Config) -> Result<()> {
    for w in &peek.weights {
        if let Some(path) = w
            .local
            .as_ref()
            .filter(|_| w.name.ends_with(".safetensors"))
        {
            if let Some(why) = bert_cli::weights::safetensors_damage(path) {
                anyhow::bail!(
                    "{} is damaged ({why}); {}",
                    path.display(),
                    if peek.cache_dir.is_some() {
                        format!("`bert-cli download --force {}` fetches it again", peek.id)
                    } else {
                        "replace it with a complete copy".into()
                    }
                );
            }
        }
    }
    bert_cli::tokenize::TextTokenizer::load(&peek.tokenizer, cfg.max_tokens(), cfg.vocab_size)?;
    Ok(())
}

/// Config, tokenizer and downloaded weights files with their sizes.
fn local_files(peek: &Peek) -> Vec<(String, u64)> {
    std::iter::once(peek.config.as_path())
        .chain(peek.tokenizer.files())
        .chain(peek.weights.iter().filter_map(|w| w.local.as_deref()))
        .map(|p| (p.display().to_string(), file_size(p)))
        .collect()
}
