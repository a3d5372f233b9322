//! The job every model command shares (classify, zero-shot, rerank): the input and the
//! dump opened before the slow work, the model loaded, the records run through the model
//! to the chosen format in order, and the exit status.

use std::io::{self, Write};

use anyhow::{Context, Result};

use super::{EXIT_ERROR, EXIT_NO_INPUT, EXIT_OK};
use bert_cli::cli::{InputArgs, OutputArgs, RunArgs};
use bert_cli::engine::{Engine, EngineOptions};
use bert_cli::input::InputOptions;
use bert_cli::options::Source;
use bert_cli::output::{attention::AttentionDump, Format};
use bert_cli::task::{LongText, Task};
use bert_cli::{device, hub, pipeline};

/// Runs `job` on a worker of its own thread pool
/// (`RunArgs::apply_threads` first: the pool takes its size from it.)
pub fn on_pool<T: Send>(job: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    device::keep_freed_memory();
    // The whole job runs on a worker of the pool: a parallel op started from a worker
    // splits in place, while one started from outside is handed over and waited for, a
    // futex wake and sleep per op (14% of the time at batch size 1).
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .context("cannot start the worker threads")?;
    pool.install(job)
}

/// What every model command does before the slow work, so a bad path, file or column
/// fails at once: the dump file created, the input opened (a CSV header read), the thread
/// count set.
pub fn open_io(
    input: &mut InputArgs,
    opts: &InputOptions,
    text_pair: Option<String>,
    output: &OutputArgs,
    run: &RunArgs,
) -> Result<(Option<AttentionDump>, Source)> {
    let dump = output
        .dump_options(run.quiet)
        .map(|(path, opts)| {
            let file = input.input.as_deref().filter(|p| p.as_os_str() != "-");
            bert_cli::output::atomic::not_the_input(path, file)?;
            AttentionDump::create(path, opts)
        })
        .transpose()?;
    let source = input.take_source(opts, text_pair, run.quiet)?;
    run.apply_threads();
    Ok((dump, source))
}

/// Buffered standard output.
pub fn stdout() -> Box<dyn Write> {
    Box::new(io::BufWriter::new(io::stdout().lock()))
}

/// Finds and loads the model, with the warnings a user should see before its answers.
pub fn load(model: &str, run: &RunArgs, options: &EngineOptions) -> Result<Engine> {
    let device = device::open(run.device)?;
    let files = hub::resolve(model, &run.hub.options(run.quiet))?;
    let engine = Engine::load(&files, device, options)?;
    if !run.quiet {
        if engine.quantized && !bert_cli::kernels::cpu::int8_simd() {
            eprintln!("bert-cli: warning: this CPU lacks AVX2 (or BERT_CLI_PORTABLE is set), so --quantize q8 runs its integer products in portable code, without a speed-up");
        }
        if !engine.head_is_trained() {
            eprintln!(
                "bert-cli: warning: {} has no trained classification head; using a seeded random one, so the labels are meaningless",
                engine.model_id
            );
        }
    }
    Ok(engine)
}

/// Runs the records through the pipeline into `out` (and the dump), then says what the
/// user should know: truncations, no input. Returns the exit status.
pub fn finish(
    engine: &Engine,
    task: &Task,
    source: Source,
    mut out: Box<dyn Format>,
    mut dump: Option<AttentionDump>,
    run: &RunArgs,
) -> Result<u8> {
    let quiet = run.quiet;
    if let Some(d) = dump.as_mut() {
        d.describe(
            &engine.model_id,
            &engine.labels,
            engine.num_layers,
            engine.num_heads,
        )?;
    }
    let batching = run.pipeline_options(engine.device());
    let progress = source.progress(quiet);
    let summary = pipeline::run(
        engine,
        task,
        source.records,
        out.as_mut(),
        dump.as_mut(),
        batching,
        &progress,
    )?;
    out.finish().context("cannot write results")?;
    progress.finish();
    if let Some(d) = dump {
        d.finish()?;
    }
    if !quiet && summary.truncated > 0 {
        eprintln!(
            "bert-cli: warning: {} of {} inputs were longer than {} tokens and were cut to that length \
             (jsonl output marks them \"truncated\"; --max-length sets the cut up to the model's limit{})",
            summary.truncated,
            summary.inputs,
            engine.max_length,
            if matches!(task, Task::Classify(LongText::Truncate)) {
                ", --long-text chunk reads all of each text"
            } else {
                ""
            }
        );
    }
    if summary.inputs == 0 && !quiet {
        eprintln!(
            "bert-cli: no input: give texts as arguments, a file with --input FILE, or records on standard input (see --help)"
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
