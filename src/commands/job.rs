//! The job every model command shares (classify, zero-shot, rerank): the input and the
//! dump opened before the slow work, the model loaded, the records run through the model
//! to the chosen format in order, and the exit status.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::{EXIT_ERROR, EXIT_NO_INPUT, EXIT_OK};
use bert_cli::cli::{InputArgs, OutputArgs, RunArgs};
use bert_cli::engine::{Engine, EngineOptions};
use bert_cli::input::InputOptions;
use bert_cli::options::Source;
use bert_cli::output::{atomic::AtomicFile, attention::AttentionDump, Format};
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

/// Where results go: standard output, or `--output FILE` written whole or not at all.
pub struct Results(Option<Arc<Mutex<Option<AtomicFile>>>>);

impl Results {
    /// A writer for the chosen format.
    pub fn writer(&self) -> Box<dyn Write> {
        match &self.0 {
            None => Box::new(io::BufWriter::new(io::stdout().lock())),
            Some(file) => Box::new(ResultsFile(file.clone())),
        }
    }

    /// Moves the file into place (nothing for standard output).
    fn commit(self) -> Result<()> {
        let Some(file) = self.0 else {
            return Ok(());
        };
        let file = file
            .lock()
            .map_err(|_| anyhow::anyhow!("internal error: the results file was poisoned"))?
            .take();
        match file {
            Some(f) => f.commit(),
            None => Ok(()),
        }
    }
}

/// The `Write` side of `--output FILE`.
struct ResultsFile(Arc<Mutex<Option<AtomicFile>>>);

impl Write for ResultsFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self
            .0
            .lock()
            .map_err(|_| io::Error::other("the results file was poisoned"))?;
        let file = file
            .as_mut()
            .ok_or_else(|| io::Error::other("the results file is already closed"))?;
        file.write(buf)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What every model command does before the slow work, so a bad path, file or column
/// fails at once: the dump and results files created, the input opened (a CSV header
/// read), the thread count set.
pub fn open_io(
    input: &mut InputArgs,
    opts: &InputOptions,
    text_pair: Option<String>,
    output: &OutputArgs,
    run: &RunArgs,
) -> Result<(Option<AttentionDump>, Source, Results)> {
    let dump = output
        .dump_options(run.quiet)
        .map(|(path, opts)| {
            let file = input.input.as_deref().filter(|p| p.as_os_str() != "-");
            bert_cli::output::atomic::not_the_input(path, file)?;
            AttentionDump::create(path, opts)
        })
        .transpose()?;
    let results = output
        .output
        .as_deref()
        .map(|path| {
            let file = input.input.as_deref().filter(|p| p.as_os_str() != "-");
            bert_cli::output::atomic::not_the_input(path, file)?;
            if output.dump_attention.as_deref() == Some(path) {
                anyhow::bail!(
                    "--output and --dump-attention both name {}; give each its own file",
                    path.display()
                );
            }
            Ok(Arc::new(Mutex::new(Some(AtomicFile::create(path)?))))
        })
        .transpose()?;
    let source = input.take_source(opts, text_pair, run.quiet)?;
    if let Some(note) = run.apply_threads()? {
        if !run.quiet {
            eprintln!("bert-cli: note: {note}");
        }
    }
    Ok((dump, source, Results(results)))
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

/// How long an f32 run on a CPU with AMX must take before the hint to use them shows.
const AMX_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the engine runs f32 on a CPU whose AMX tiles `--dtype bf16` would use.
fn amx_unused(engine: &Engine) -> bool {
    engine.device().is_cpu()
        && engine.dtype == candle_core::DType::F32
        && !engine.quantized
        && bert_cli::kernels::cpu::amx()
}

/// Runs the records through the pipeline into `out` (and the dump), then says what the
/// user should know: truncations, no input. Returns the exit status.
pub fn finish(
    engine: &Engine,
    task: &Task,
    source: Source,
    mut out: Box<dyn Format>,
    mut dump: Option<AttentionDump>,
    results: Results,
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
    let file = source.file.clone();
    let progress = source.progress(quiet);
    let started = std::time::Instant::now();
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
    drop(out);
    results.commit()?;
    progress.finish();
    // With no input, no page or JSON is written: an empty dump would only look like one.
    let dumping = dump.is_some();
    if let Some(d) = dump.filter(|_| summary.inputs > 0) {
        d.finish()?;
    }
    if !quiet && summary.truncated > 0 {
        eprintln!(
            "bert-cli: warning: {} of {} inputs were longer than {} tokens and were cut to that length \
             ({}--max-length sets the cut up to the model's limit{})",
            summary.truncated,
            summary.inputs,
            engine.max_length,
            if matches!(task, Task::Rerank { .. }) {
                ""
            } else {
                "jsonl output marks them \"truncated\"; "
            },
            if matches!(task, Task::Classify(LongText::Truncate)) {
                ", --long-text chunk reads all of each text"
            } else {
                ""
            }
        );
    }
    if !quiet && started.elapsed() >= AMX_HINT_AFTER && amx_unused(engine) {
        eprintln!(
            "bert-cli: hint: this CPU has AMX tiles, which this f32 run did not use; --dtype bf16 \
             runs the dense layers on them, about twice as fast or more (labels may differ \
             from f32 on near-ties; see --dtype in --help)"
        );
    }
    if summary.inputs == 0 && !quiet {
        match &file {
            Some(name) => eprintln!(
                "bert-cli: no input: {name} holds no records{}",
                if dumping { "; no attention dump was written" } else { "" }
            ),
            None => eprintln!(
                "bert-cli: no input: give texts as arguments, a file with --input FILE, or records on standard input (see --help)"
            ),
        }
    }
    Ok(if summary.failed > 0 {
        EXIT_ERROR
    } else if summary.inputs == 0 {
        EXIT_NO_INPUT
    } else {
        EXIT_OK
    })
}
