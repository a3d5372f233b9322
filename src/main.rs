//! Entry point: wires the flags to the hub, device, engine, pipeline and outputs, and
//! turns the outcome into an exit status.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;

use bert_cli::cli::{
    ClassifyArgs, Cli, Command, DTypeArg, FormatArg, HubArgs, ModelRefArgs, QuantizeArg,
};
use bert_cli::engine::{Engine, EngineOptions};
use bert_cli::model::BertClassifier;
use bert_cli::output::attention::AttentionDump;
use bert_cli::output::{self, FormatKind, FormatOptions};
use bert_cli::pipeline::{self, PipelineOptions, Source};
use bert_cli::{device, hub};

/// Every input classified.
const EXIT_OK: u8 = 0;
/// Nothing to classify.
const EXIT_NO_INPUT: u8 = 1;
/// Something failed.
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Classify(args) => classify(args),
        Command::Download(args) => download(args),
        Command::Info(args) => info(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("bert-cli: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A reader that went away (`| head`) is not an error worth a message.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Hub settings from the flags; progress bars only on a terminal.
fn hub_options(hub: &HubArgs, quiet: bool) -> hub::HubOptions {
    hub::HubOptions {
        revision: hub.revision.clone(),
        offline: hub.offline,
        progress: !quiet && io::stderr().is_terminal(),
        warn: !quiet,
    }
}

/// `bert-cli download`: resolve every file, print where each landed.
fn download(args: ModelRefArgs) -> Result<u8> {
    let files = hub::resolve(&args.model, &hub_options(&args.hub, args.quiet))?;
    let mut out = io::stdout().lock();
    for f in files.all() {
        writeln!(out, "{:>10}  {}", human_size(file_size(f)), f.display())?;
    }
    if files.cache_dir.is_some() {
        writeln!(
            out,
            "ready for offline use: bert-cli classify --offline --model {}",
            files.id
        )?;
    }
    Ok(EXIT_OK)
}

/// `bert-cli info`: architecture, labels, files.
fn info(args: ModelRefArgs) -> Result<u8> {
    let files = hub::resolve(&args.model, &hub_options(&args.hub, args.quiet))?;
    let cfg = bert_cli::model::config::Config::from_file(&files.config)?;
    let vb = bert_cli::model::open_weights(
        &files.weights,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let head = vb.contains_tensor("classifier.weight");
    let mut out = io::stdout().lock();
    writeln!(out, "model:        {}", files.id)?;
    if let Some(dir) = &files.cache_dir {
        writeln!(out, "cache:        {}", dir.display())?;
    }
    writeln!(
        out,
        "architecture: BERT, {} layers, {} heads, hidden size {}, feed-forward {}, {}",
        cfg.num_layers, cfg.num_heads, cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act
    )?;
    writeln!(out, "max length:   {} tokens", cfg.max_position_embeddings)?;
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

fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes in KB/MB/GB (powers of 1000, like the hub's web pages).
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// Sets the thread count once, before any pool exists: rayon's global pool and candle's
/// own workers both read RAYON_NUM_THREADS, so one setting covers all and none oversubscribe.
fn set_threads(threads: Option<u64>) {
    if let Some(n) = threads {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::remove_var("CANDLE_NUM_THREADS");
    }
}

fn classify(args: ClassifyArgs) -> Result<u8> {
    set_threads(args.threads);
    device::keep_freed_memory();
    // The whole job runs on a worker of the pool: a parallel op started from a worker
    // splits in place, while one started from outside is handed over and waited for, a
    // futex wake and sleep per op (14% of the time at batch size 1).
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .context("cannot start the worker threads")?;
    pool.install(move || classify_on_pool(args))
}

/// `classify`, on a worker of the thread pool.
fn classify_on_pool(args: ClassifyArgs) -> Result<u8> {
    // Open the dump file before the slow work so a bad path fails at once.
    let mut dump = args
        .dump_attention
        .as_deref()
        .map(AttentionDump::create)
        .transpose()?;
    let source = match (&args.input, args.texts.is_empty()) {
        (Some(p), _) if p.as_os_str() != "-" => Source::Lines {
            reader: Box::new(
                std::fs::File::open(p)
                    .with_context(|| format!("cannot open input file {}", p.display()))?,
            ),
            name: p.display().to_string(),
        },
        (None, false) => Source::Args(args.texts),
        _ => {
            if io::stdin().is_terminal() && !args.quiet {
                eprintln!(
                    "bert-cli: reading one text per line from standard input (Ctrl-D to end)"
                );
            }
            Source::Lines {
                reader: Box::new(io::stdin()),
                name: "stdin".into(),
            }
        }
    };

    let device = device::open(args.device)?;
    let defaults = PipelineOptions::for_device(&device);
    let files = hub::resolve(&args.model.model, &hub_options(&args.model.hub, args.quiet))?;
    let engine = Engine::load(
        &files,
        device,
        &EngineOptions {
            max_length: args.max_length,
            labels: args.model.labels.clone(),
            allow_untrained_head: args.model.allow_untrained_head,
            dtype: match args.dtype {
                DTypeArg::Auto => None,
                DTypeArg::F32 => Some(DType::F32),
                DTypeArg::F16 => Some(DType::F16),
                DTypeArg::Bf16 => Some(DType::BF16),
            },
            quantize_q8: args.quantize == QuantizeArg::Q8,
        },
    )?;
    if engine.quantized && !BertClassifier::q8_is_fast() && !args.quiet {
        eprintln!("bert-cli: warning: this CPU lacks AVX-512 VNNI, so --quantize q8 gives the same answers but no speed-up");
    }
    if !engine.head_is_trained() && !args.quiet {
        eprintln!(
            "bert-cli: warning: {} has no trained classification head; using a seeded random one, so the labels are meaningless",
            engine.model_id
        );
    }

    if let Some(d) = dump.as_mut() {
        d.describe(&engine.model_id, &engine.labels);
    }
    let kind = match args.format {
        FormatArg::Human => FormatKind::Human,
        FormatArg::Jsonl => FormatKind::Jsonl,
        FormatArg::Tsv => FormatKind::Tsv,
    };
    let stdout: Box<dyn Write> = Box::new(io::BufWriter::new(io::stdout().lock()));
    let mut out = output::writer(
        kind,
        stdout,
        FormatOptions {
            labels: engine.labels.clone(),
            all_scores: args.all_scores,
        },
    );
    let summary = pipeline::run(
        &engine,
        source,
        out.as_mut(),
        dump.as_mut(),
        PipelineOptions {
            batch_size: args.batch_size.map_or(defaults.batch_size, |n| n as usize),
            max_batch_tokens: args
                .max_batch_tokens
                .map_or(defaults.max_batch_tokens, |n| n as usize),
        },
    )?;
    if let Some(d) = dump {
        d.finish()?;
    }
    Ok(if summary.failed > 0 {
        EXIT_ERROR
    } else if summary.inputs == 0 {
        EXIT_NO_INPUT
    } else {
        EXIT_OK
    })
}
