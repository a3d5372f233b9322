//! Flags turned into settings, in one place: each method reads the parsed arguments
//! (`cli`) and returns what the engine, pipeline, hub and outputs take.

use std::io::{self, IsTerminal};

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::cli::{ClassifyArgs, DTypeArg, FormatArg, HubArgs, QuantizeArg};
use crate::engine::EngineOptions;
use crate::hub::HubOptions;
use crate::output::{FormatKind, FormatOptions};
use crate::pipeline::{PipelineOptions, Source};

impl HubArgs {
    /// Hub settings; progress bars only on a terminal, warnings unless `quiet`.
    pub fn options(&self, quiet: bool) -> HubOptions {
        HubOptions {
            revision: self.revision.clone(),
            offline: self.offline,
            progress: !quiet && io::stderr().is_terminal(),
            warn: !quiet,
        }
    }
}

impl ClassifyArgs {
    /// How the checkpoint is loaded.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            max_length: self.max_length,
            labels: self.model.labels.clone(),
            allow_untrained_head: self.model.allow_untrained_head,
            dtype: match self.dtype {
                DTypeArg::Auto => None,
                DTypeArg::F32 => Some(DType::F32),
                DTypeArg::F16 => Some(DType::F16),
                DTypeArg::Bf16 => Some(DType::BF16),
            },
            quantize_q8: self.quantize == QuantizeArg::Q8,
        }
    }

    /// Batch limits: the flags, else the device's defaults.
    pub fn pipeline_options(&self, device: &Device) -> PipelineOptions {
        let defaults = PipelineOptions::for_device(device);
        PipelineOptions {
            batch_size: self.batch_size.map_or(defaults.batch_size, |n| n as usize),
            max_batch_tokens: self
                .max_batch_tokens
                .map_or(defaults.max_batch_tokens, |n| n as usize),
        }
    }

    /// The output format and what it needs besides the records.
    pub fn format(&self, labels: &[String]) -> (FormatKind, FormatOptions) {
        let kind = match self.format {
            FormatArg::Human => FormatKind::Human,
            FormatArg::Jsonl => FormatKind::Jsonl,
            FormatArg::Tsv => FormatKind::Tsv,
        };
        let opts = FormatOptions {
            labels: labels.to_vec(),
            all_scores: self.all_scores,
        };
        (kind, opts)
    }

    /// Where the inputs come from: the TEXT arguments, `--input FILE`, or standard input
    /// (with a hint on a terminal, where a user may not know it waits for lines). Takes
    /// the arguments out of `self`. An input file that cannot be opened is an error
    /// naming it.
    pub fn take_source(&mut self) -> Result<Source> {
        Ok(match (&self.input, self.texts.is_empty()) {
            (Some(p), _) if p.as_os_str() != "-" => Source::Lines {
                reader: Box::new(
                    std::fs::File::open(p)
                        .with_context(|| format!("cannot open input file {}", p.display()))?,
                ),
                name: p.display().to_string(),
            },
            (None, false) => Source::Args(std::mem::take(&mut self.texts)),
            _ => {
                if io::stdin().is_terminal() && !self.quiet {
                    eprintln!(
                        "bert-cli: reading one text per line from standard input (Ctrl-D to end)"
                    );
                }
                Source::Lines {
                    reader: Box::new(io::stdin()),
                    name: "stdin".into(),
                }
            }
        })
    }

    /// Threads for the model: sets the count once, before any pool exists. rayon's
    /// global pool and candle's own workers both read RAYON_NUM_THREADS, so one setting
    /// covers all and none oversubscribe.
    pub fn apply_threads(&self) {
        if let Some(n) = self.threads {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            std::env::remove_var("CANDLE_NUM_THREADS");
        }
    }
}
