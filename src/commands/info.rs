//! `bert-cli info`: a model's architecture, labels and files.

use std::io::{self, Write};

use anyhow::Result;

use super::{file_size, human_size, EXIT_OK};
use bert_cli::cli::InfoArgs;
use bert_cli::hub;
use bert_cli::models::config::Config;

/// Resolves the model's files and describes them.
pub fn run(args: InfoArgs) -> Result<u8> {
    let args = args.model;
    let files = hub::resolve(&args.model, &args.hub.options(args.quiet))?;
    let cfg = Config::from_file(&files.config)?;
    let vb = bert_cli::weights::open_weights(
        &files.weights,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let head =
        vb.contains_tensor("classifier.weight") || vb.contains_tensor("classifier.out_proj.weight");
    let mut out = io::stdout().lock();
    writeln!(out, "model:        {}", files.id)?;
    if let Some(dir) = &files.cache_dir {
        writeln!(out, "cache:        {}", dir.display())?;
    }
    writeln!(
        out,
        "architecture: {} (model_type {}), {} layers, {} heads, hidden size {}, feed-forward {}, {}",
        cfg.family_name(),
        cfg.model_type,
        cfg.num_layers,
        cfg.num_heads,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.hidden_act
    )?;
    writeln!(out, "max length:   {} tokens", cfg.max_tokens())?;
    writeln!(out, "vocabulary:   {} tokens", cfg.vocab_size)?;
    writeln!(
        out,
        "head:         {}",
        if head {
            "trained classifier"
        } else {
            "none (a bare encoder: classify refuses it without --allow-untrained-head)"
        }
    )?;
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
    writeln!(out, "files:")?;
    let mut total = 0;
    for f in files.all() {
        let size = file_size(f);
        total += size;
        writeln!(out, "  {:>10}  {}", human_size(size), f.display())?;
    }
    writeln!(out, "  {:>10}  total", human_size(total))?;
    Ok(EXIT_OK)
}
