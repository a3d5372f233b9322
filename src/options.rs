//! Flags turned into settings, in one place: each method reads the parsed arguments
//! (`cli`) and returns what the engine, pipeline, hub and outputs take.

use std::io::{self, IsTerminal};

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::cli::{
    ClassifyArgs, DTypeArg, HubArgs, InputArgs, LongTextArg, OutputArgs, QuantizeArg, RankArgs,
    RunArgs,
};
use crate::engine::EngineOptions;
use crate::hub::HubOptions;
use crate::input::{self, Arrival, InputFormat, InputOptions, Records};
use crate::models::config::Scoring;
use crate::output::attention::{DumpFormat, DumpOptions};
use crate::output::{FormatKind, FormatOptions};
use crate::pipeline::PipelineOptions;
use crate::progress::Progress;
use crate::task::{Aggregate, LongText};

/// Where the input records come from.
pub struct Source {
    /// The records.
    pub records: Records,
    /// Bytes left to read, when the input is a regular file (`--input FILE` or `< FILE`).
    pub size: Option<u64>,
    /// Typed at a terminal or given as arguments.
    pub interactive: bool,
    /// The file named with `--input`, for messages.
    pub file: Option<String>,
}

impl HubArgs {
    /// Hub settings; progress bars only on a terminal, warnings unless `quiet`.
    pub fn options(&self, quiet: bool) -> HubOptions {
        HubOptions {
            revision: self.revision.clone(),
            offline: self.offline,
            progress: !quiet && io::stderr().is_terminal(),
            warn: !quiet,
            force: false,
            verify_cached: false,
        }
    }
}

impl RunArgs {
    /// How the checkpoint is loaded, with `labels` naming the model's labels.
    pub fn engine_options(&self, labels: Option<Vec<String>>) -> EngineOptions {
        EngineOptions {
            max_length: self.max_length,
            labels,
            labels_flag: None,
            allow_untrained_head: self.allow_untrained_head,
            dtype: match self.dtype {
                DTypeArg::Auto => None,
                DTypeArg::F32 => Some(DType::F32),
                DTypeArg::F16 => Some(DType::F16),
                DTypeArg::Bf16 => Some(DType::BF16),
            },
            quantize_q8: self.quantize == QuantizeArg::Q8,
            scoring: None,
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
            warn: !self.quiet,
        }
    }

    /// Threads for the model: sets the count once, before any pool exists. rayon's
    /// global pool and candle's own workers both read RAYON_NUM_THREADS, so one setting
    /// covers all and none oversubscribe. More threads than the cores this process may
    /// use only contend (`-j 999` on 2 cores took 47 s where 2 threads took 0.6 s), so
    /// the count is capped at them; returns the note saying so. A RAYON_NUM_THREADS that
    /// is not a count is an error, not ignored.
    pub fn apply_threads(&self) -> Result<Option<String>> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (asked, source) = match self.threads {
            Some(n) => (n as usize, format!("-j {n}")),
            None => match std::env::var("RAYON_NUM_THREADS") {
                Err(_) => return Ok(None),
                Ok(v) => match v.trim().parse::<usize>() {
                    // rayon reads 0 as "its default", the cores.
                    Ok(0) => return Ok(None),
                    Ok(n) => (n, format!("RAYON_NUM_THREADS={n}")),
                    Err(_) => anyhow::bail!(
                        "RAYON_NUM_THREADS={v:?} is not a number of threads; set a count such as 4, \
                         or unset it to use every core"
                    ),
                },
            },
        };
        let threads = asked.min(cores);
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::remove_var("CANDLE_NUM_THREADS");
        Ok((asked > cores).then(|| {
            format!(
                "{source} asks for more threads than the {cores} CPU cores this process may use; \
                 using {cores} (more would only contend for them)"
            )
        }))
    }
}

impl ClassifyArgs {
    /// What to do with long texts; the aggregate defaults to max for multi-label models.
    pub fn long_text(&self, scoring: Scoring) -> LongText {
        match self.long_text {
            LongTextArg::Truncate => LongText::Truncate,
            LongTextArg::Chunk => LongText::Chunk {
                stride: self.stride,
                aggregate: match self.aggregate {
                    Some(aggregate) => aggregate,
                    None if scoring == Scoring::Sigmoid => Aggregate::Max,
                    None => Aggregate::Mean,
                },
            },
        }
    }

    /// Flags that only mean something together, checked before any work.
    pub fn check(&self) -> Result<()> {
        if self.long_text == LongTextArg::Truncate && (self.stride != 0 || self.aggregate.is_some())
        {
            anyhow::bail!("--stride and --aggregate describe --long-text chunk");
        }
        if self.long_text == LongTextArg::Chunk
            && (self.pair || self.pair_field.is_some() || self.text_pair.is_some())
        {
            anyhow::bail!("--long-text chunk splits single texts; pairs are truncated (longest_first), so drop --long-text or the pair flags");
        }
        if self.pair && self.text_pair.is_some() {
            anyhow::bail!("--pair reads pairs from input lines; --text-pair gives the second text of the TEXT arguments: use one");
        }
        Ok(())
    }
}

impl OutputArgs {
    /// The output format and what it needs besides the records: the label names, whether
    /// scores are independent (multi-label), how to rank, and what the input is (its
    /// CSV/TSV columns come back out in CSV/TSV; JSON Lines in gets every result under
    /// one key in JSONL).
    pub fn format(
        &self,
        labels: &[String],
        multi_label: bool,
        rank: &RankArgs,
        ids: bool,
        records: &Records,
    ) -> (FormatKind, FormatOptions) {
        let columns = records.columns.as_deref();
        let kind = self.format;
        let opts = FormatOptions {
            labels: labels.to_vec(),
            all_scores: rank.all_scores,
            top_k: rank.top_k.map(|k| k.min(labels.len())),
            threshold: rank.threshold.or(multi_label.then_some(0.5)),
            output_key: self.output_key.clone(),
            columns: columns
                .filter(|_| matches!(kind, FormatKind::Csv | FormatKind::Tsv | FormatKind::Jsonl))
                .map(<[String]>::to_vec),
            ids,
            pairs: false,
            ranking: false,
            keyed: records.jsonl,
        };
        (kind, opts)
    }

    /// What the attention dump keeps, and its format (from the file name unless given).
    pub fn dump_options(&self, quiet: bool) -> Option<(&std::path::Path, DumpOptions)> {
        let path = self.dump_attention.as_deref()?;
        let format = self
            .attention_format
            .unwrap_or_else(|| DumpFormat::from_path(path));
        Some((
            path,
            DumpOptions {
                format,
                layers: self.attention_layers.clone(),
                heads: self.attention_heads.clone(),
                warn: !quiet,
            },
        ))
    }
}

impl InputArgs {
    /// How input records are read: the flags, the format defaulting to the --input file's
    /// extension; `pair_tab` and `pair_field` read pairs.
    pub fn input_options(&self, pair_tab: bool, pair_field: Option<String>) -> InputOptions {
        let format = self.input_format.unwrap_or_else(|| {
            self.input
                .as_deref()
                .map_or(InputFormat::Lines, InputFormat::from_path)
        });
        InputOptions {
            format,
            field: self.field.clone(),
            id_field: self.id_field.clone(),
            pair_field,
            pair_tab,
            header: !self.no_header,
            null_data: self.null_data,
            delimiter: self.delimiter,
        }
    }

    /// The input records: the TEXT arguments (each paired with `text_pair` when given),
    /// `--input FILE`, or standard input (with a hint on a terminal, where a user may not
    /// know it waits for lines). Takes the arguments out of `self`. A file that cannot be
    /// opened, or a CSV/TSV column that does not exist, is an error naming it.
    pub fn take_source(
        &mut self,
        opts: &InputOptions,
        text_pair: Option<String>,
        quiet: bool,
    ) -> Result<Source> {
        if !self.texts.is_empty() {
            if self.field.is_some()
                || self.id_field.is_some()
                || self.input_format.is_some()
                || self.no_header
                || self.null_data
                || opts.pair_tab
                || opts.pair_field.is_some()
            {
                anyhow::bail!("--input-format, --field, --id-field, --no-header, --null-data, --pair and --pair-field describe --input records; TEXT arguments are classified as given (--text-pair gives them a second text)");
            }
            return Ok(Source {
                records: input::from_args(std::mem::take(&mut self.texts), text_pair),
                size: None,
                interactive: true,
                file: None,
            });
        }
        if text_pair.is_some() {
            anyhow::bail!("--text-pair pairs the TEXT arguments; records from --input or standard input carry their second text with --pair (TEXT<TAB>TEXT_PAIR lines) or --pair-field");
        }
        match &self.input {
            Some(p) if p.as_os_str() != "-" => {
                let file = std::fs::File::open(p)
                    .with_context(|| format!("cannot open input file {}", p.display()))?;
                let size = file
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                let name = p.display().to_string();
                // A FIFO or a device named as a file still streams.
                let arrival = if size.is_some() {
                    Arrival::Ready
                } else {
                    Arrival::Stream
                };
                let (reader, compressed) = input::gunzip_if_compressed(Box::new(file))
                    .with_context(|| format!("cannot read input file {name}"))?;
                // Progress counts the bytes read out, which a compressed size does not bound.
                let size = size.filter(|_| !compressed);
                Ok(Source {
                    records: input::open(reader, &name, opts)?.arriving(arrival),
                    size,
                    interactive: false,
                    file: Some(name),
                })
            }
            _ => {
                let interactive = io::stdin().is_terminal();
                if interactive && !quiet {
                    let what = match (opts.format, opts.null_data, opts.pair_tab) {
                        (InputFormat::Lines, false, false) => "one text per line",
                        (InputFormat::Lines, false, true) => "one TEXT<TAB>TEXT_PAIR per line",
                        (InputFormat::Lines, true, _) => "NUL-terminated texts",
                        (InputFormat::Jsonl, _, _) => "one JSON object per line",
                        (InputFormat::Csv, _, _) => "CSV rows",
                        (InputFormat::Tsv, _, _) => "TSV rows",
                    };
                    eprintln!("bert-cli: reading {what} from standard input (Ctrl-D to end)");
                }
                // `< FILE` is as complete as --input FILE (and has a size for the bar).
                let size = if interactive { None } else { stdin_file_size() };
                let arrival = match (interactive, size) {
                    (true, _) => Arrival::Typed,
                    (false, Some(_)) => Arrival::Ready,
                    (false, None) => Arrival::Stream,
                };
                Ok(Source {
                    records: input::open(Box::new(io::stdin()), "stdin", opts)?.arriving(arrival),
                    size,
                    interactive,
                    file: None,
                })
            }
        }
    }
}

/// Bytes left to read in the regular file standard input reads, if it is one.
fn stdin_file_size() -> Option<u64> {
    use std::io::Seek;
    let mut file = input::process_stream(0).ok()?;
    let meta = file.metadata().ok()?;
    // What is left to read: a shell may hand over a file already partly read.
    let read = file.stream_position().unwrap_or(0);
    meta.is_file().then(|| meta.len().saturating_sub(read))
}

impl Source {
    /// A progress bar on stderr when it is a terminal, `quiet` is not set and the input
    /// is not typed or given as arguments (where each answer shows progress itself).
    pub fn progress(&self, quiet: bool) -> Progress {
        if !quiet && !self.interactive && io::stderr().is_terminal() {
            Progress::on_stderr(self.size)
        } else {
            Progress::hidden()
        }
    }
}
