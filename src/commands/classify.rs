//! `bert-cli classify`: inputs through the model to the chosen format, in order.

use std::io::{self, Write};

use anyhow::{Context, Result};

use super::{EXIT_ERROR, EXIT_NO_INPUT, EXIT_OK};
use bert_cli::cli::ClassifyArgs;
use bert_cli::engine::Engine;
use bert_cli::output::{self, attention::AttentionDump};
use bert_cli::{device, hub, pipeline};

/// Runs the job on a worker of its own thread pool.
pub fn run(args: ClassifyArgs) -> Result<u8> {
    args.apply_threads();
    device::keep_freed_memory();
    // The whole job runs on a worker of the pool: a parallel op started from a worker
    // splits in place, while one started from outside is handed over and waited for, a
    // futex wake and sleep per op (14% of the time at batch size 1).
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .context("cannot start the worker threads")?;
    pool.install(move || on_pool(args))
}

/// `run`, on a worker of the thread pool.
fn on_pool(mut args: ClassifyArgs) -> Result<u8> {
    // Open the dump file and the input (a CSV header naming no such column) before the
    // slow work, so a bad path or flag fails at once.
    let mut dump = args
        .dump_options()
        .map(|(path, opts)| AttentionDump::create(path, opts))
        .transpose()?;
    let source = args.take_source()?;

    let device = device::open(args.device)?;
    let batching = args.pipeline_options(&device);
    let files = hub::resolve(&args.model.model, &args.model.hub.options(args.quiet))?;
    let engine = Engine::load(&files, device, &args.engine_options())?;
    warn_about(&engine, args.quiet);

    if let Some(d) = dump.as_mut() {
        d.describe(
            &engine.model_id,
            &engine.labels,
            engine.num_layers,
            engine.num_heads,
        )?;
    }
    let (kind, format) = args.format(
        &engine.labels,
        engine.scoring,
        source.records.columns.as_deref(),
    );
    let stdout: Box<dyn Write> = Box::new(io::BufWriter::new(io::stdout().lock()));
    let mut out = output::writer(kind, stdout, format);
    let progress = args.progress(&source);
    let summary = pipeline::run(
        &engine,
        source.records,
        out.as_mut(),
        dump.as_mut(),
        batching,
        &progress,
        args.quiet,
    )?;
    progress.finish();
    if let Some(d) = dump {
        d.finish()?;
    }
    if !args.quiet && summary.truncated > 0 {
        eprintln!(
            "bert-cli: warning: {} of {} inputs were longer than {} tokens and were cut to that length \
             (jsonl output marks them \"truncated\"; --max-length sets the cut up to the model's limit)",
            summary.truncated, summary.inputs, engine.max_length
        );
    }
    if summary.inputs == 0 && !args.quiet {
        eprintln!(
            "bert-cli: no input: give texts as arguments, a file with --input FILE, or records on standard input (see bert-cli classify --help)"
        );
    }
    Ok(if summary.failed > 0 {
        EXIT_ERROR
    } else if summary.inputs == 0 {
        EXIT_NO_INPUT
    } else {
        EXIT_OK
    })
}

/// What the user should know about the loaded model before its answers.
fn warn_about(engine: &Engine, quiet: bool) {
    if quiet {
        return;
    }
    if engine.quantized && !bert_cli::kernels::cpu::vnni() {
        eprintln!("bert-cli: warning: this CPU lacks AVX-512 VNNI, so --quantize q8 gives the same answers but no speed-up");
    }
    if !engine.head_is_trained() {
        eprintln!(
            "bert-cli: warning: {} has no trained classification head; using a seeded random one, so the labels are meaningless",
            engine.model_id
        );
    }
}
