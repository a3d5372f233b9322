//! Streams inputs through the engine in batches and hands results to the outputs in input
//! order. A reader thread keeps memory bounded; a window of inputs (the first one batch)
//! is filled from a file or arguments, and cut early from a pipe that pauses or a
//! terminal, so an interactive stream sees each answer without waiting for end of input. Within a window, inputs are
//! sorted by length so each padded batch wastes little work on padding, then results are
//! put back in input order.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::engine::{AttentionKeep, Engine, Prediction};
use crate::input::{Arrival, Item, Records};
use crate::output::attention::AttentionDump;
use crate::output::{Format, Record, Scored};
use crate::progress::Progress;
use crate::task::{Answer, Part, Planned, Task};

/// Batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Most inputs per forward pass.
    pub batch_size: usize,
    /// Most padded tokens (inputs x longest input) per forward pass, so a batch of long
    /// inputs does not take as much memory as `batch_size` of them.
    pub max_batch_tokens: usize,
    /// Warn on stderr about records that fail (the first [`MAX_WARNINGS`]).
    pub warn: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_batch_tokens: 8192,
            warn: true,
        }
    }
}

impl PipelineOptions {
    /// Defaults for a device. The CPU is saturated by 32-input batches and gains nothing
    /// from bigger ones but memory; a GPU needs thousands of tokens per pass to be busy.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Self::default()
        } else {
            Self {
                batch_size: 256,
                max_batch_tokens: 65536,
                warn: true,
            }
        }
    }
}

/// Attention holds `batch x heads x length^2` scores, so long inputs also get a bound on
/// `batch x length^2` (in units of the token budget): 512-token inputs go 2 at a time.
const ATTENTION_CELLS_PER_TOKEN: usize = 64;

/// Inputs sorted together; larger windows pad less but hold more results back. 32 batches
/// beat 8 by 8% on mixed-length review snippets; a window from a pipe that pauses or a
/// terminal is cut early (`next_window`), so an interactive stream still answers line by
/// line.
const WINDOW_BATCHES: usize = 32;

/// How a run went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Inputs seen.
    pub inputs: usize,
    /// Inputs that could not be classified (each reported in the output).
    pub failed: usize,
    /// Inputs longer than the model reads, cut to `max_length` tokens.
    pub truncated: usize,
    /// Model inputs run (windows of long texts and zero-shot pairs each count).
    pub model_inputs: usize,
}

/// Per-record warnings shown on stderr before the rest are only counted, so a file of bad
/// records does not bury the terminal (every one is still in the output).
const MAX_WARNINGS: usize = 20;

/// Classifies every record of `records`; results go to `out` (and `dump`) in input order.
/// Per-record errors are warned about on stderr when `opts.warn` (after [`MAX_WARNINGS`],
/// only counted).
pub fn run(
    engine: &Engine,
    task: &Task,
    records: Records,
    out: &mut dyn Format,
    mut dump: Option<&mut AttentionDump>,
    opts: PipelineOptions,
    progress: &Progress,
) -> Result<Summary> {
    let quiet = !opts.warn;
    let full = opts.batch_size.max(1) * WINDOW_BATCHES;
    // The first window is one batch, so the first answers come after one forward pass
    // (to `| head`, or a user watching) rather than after a thousand inputs.
    let mut window = opts.batch_size.max(1);
    let mut summary = Summary::default();
    let arrival = records.arrival;
    let rx = spawn_reader(records, full * 2);
    let mut bytes_done = 0u64;
    loop {
        let first = match rx.recv() {
            Ok(item) => item?,
            Err(_) => break,
        };
        let (items, failed_read) = next_window(&rx, first, window, arrival);
        window = full;
        let keep = dump.as_deref().map(AttentionDump::keep);
        // The bar moves batch by batch, not a window (a thousand records) at a time: the
        // records and bytes of the window counted as the share of its model inputs done.
        let (done, end_byte) = (
            summary.inputs,
            items.last().map_or(bytes_done, |i| i.end_byte),
        );
        let span = end_byte.saturating_sub(bytes_done);
        let report = |share: f64| {
            progress.update(
                done + (share * items.len() as f64) as usize,
                bytes_done + (share * span as f64) as u64,
            )
        };
        let results = classify_window(engine, task, &items, keep.as_ref(), opts, &report)?;
        bytes_done = end_byte;
        progress.suspend(|| -> Result<()> {
            for (item, result) in items.iter().zip(&results) {
                let outcome = match result {
                    Ok(answer) => {
                        summary.truncated += usize::from(answer.truncated());
                        summary.model_inputs += answer.parts.len();
                        Ok(Scored::Answer(answer))
                    }
                    Err(e) => {
                        summary.failed += 1;
                        if !quiet && summary.failed <= MAX_WARNINGS {
                            eprintln!("bert-cli: warning: {e}");
                        }
                        Err(e.as_str())
                    }
                };
                let record = Record { item, outcome };
                out.write(&record).context("cannot write results")?;
                if let Some(d) = dump.as_deref_mut() {
                    d.write(&record)?;
                }
            }
            out.flush().context("cannot write results")
        })?;
        summary.inputs += items.len();
        progress.update(summary.inputs, items.last().map_or(0, |i| i.end_byte));
        if let Some(e) = failed_read {
            return Err(e);
        }
    }
    if !quiet && summary.failed > MAX_WARNINGS {
        eprintln!(
            "bert-cli: warning: {} more inputs failed (not shown above; each has an error record in the output)",
            summary.failed - MAX_WARNINGS
        );
    }
    Ok(summary)
}

/// How long a window from a pipe waits for more records after its first, and for each
/// next one: long enough for a writer that is only slower than the model (`cat`, a
/// decompressor) to fill it, so its batches come out as they would from the file; too
/// short to notice for a stream that trickles, or for a writer that waits for each answer.
const STREAM_WAIT: Duration = Duration::from_millis(20);
const STREAM_GAP: Duration = Duration::from_millis(5);

/// `first` and the records after it, up to `window` in all: every one there is for input
/// that is `Ready` (the batches are then the same in every run), what comes within
/// `STREAM_WAIT`, none more than `STREAM_GAP` after the last, for a `Stream`, what is
/// already read for `Typed` input. A failed read
/// ends the window and comes back beside the records read before it, which are still
/// classified and written.
fn next_window(
    rx: &Receiver<Result<Item>>,
    first: Item,
    window: usize,
    arrival: Arrival,
) -> (Vec<Item>, Option<anyhow::Error>) {
    let deadline = Instant::now() + STREAM_WAIT;
    let mut items = vec![first];
    while items.len() < window {
        let next = match arrival {
            Arrival::Ready => rx.recv().ok(),
            Arrival::Stream => {
                let left = deadline.saturating_duration_since(Instant::now());
                rx.recv_timeout(left.min(STREAM_GAP)).ok()
            }
            Arrival::Typed => rx.try_recv().ok(),
        };
        match next {
            Some(Ok(item)) => items.push(item),
            Some(Err(e)) => return (items, Some(e)),
            None => break,
        }
    }
    (items, None)
}

/// Reads records on a thread into a bounded channel, so parsing overlaps the model and
/// memory stays bounded; a read error ends the stream with that error.
fn spawn_reader(records: Records, capacity: usize) -> Receiver<Result<Item>> {
    let (tx, rx) = sync_channel(capacity);
    thread::spawn(move || {
        for item in records.items {
            let stop = item.is_err();
            if tx.send(item).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Groups inputs into batches: shortest first, each batch within `batch_size` inputs and
/// `max_batch_tokens` padded tokens (a single input always fits). Returns index lists.
fn plan_batches(lengths: &[usize], opts: PipelineOptions) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so this input is the longest of the batch if it joins.
        let (n, t) = (current.len() + 1, lengths[i]);
        let too_big = n > opts.batch_size.max(1)
            || n * t > opts.max_batch_tokens
            || n * t * t > opts.max_batch_tokens * ATTENTION_CELLS_PER_TOKEN;
        if !current.is_empty() && too_big {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// A record's answer, or why it has none.
type Outcome = Result<Answer, String>;

/// Tokenizes and classifies one window of records, returning one outcome per record.
/// Every record's model inputs (one, a window per chunk, a pair per candidate label) go
/// into one pool, sorted by length and batched together.
fn classify_window(
    engine: &Engine,
    task: &Task,
    items: &[Item],
    keep: Option<&AttentionKeep>,
    opts: PipelineOptions,
    report: &dyn Fn(f64),
) -> Result<Vec<Outcome>> {
    let keep_attention = keep.is_some();
    // Tokenizing in parallel matters on a GPU, where one thread cannot keep up with it.
    let planned: Vec<Result<Planned, String>> = items
        .par_iter()
        .map(|item| match &item.error {
            Some(e) => Err(e.clone()),
            None => task
                .plan(engine, item, keep_attention)
                .map_err(|e| format!("input {}: {e:#}", item.number)),
        })
        .collect();
    // (record, part) of every model input, and its length.
    let pool: Vec<(usize, usize)> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p.inputs.len())))
        .flat_map(|(i, n)| (0..n).map(move |j| (i, j)))
        .collect();
    let input = |&(i, j): &(usize, usize)| match &planned[i] {
        Ok(p) => Some(&p.inputs[j]),
        Err(_) => None,
    };
    let lengths: Vec<usize> = pool
        .iter()
        .map(|k| input(k).map_or(0, |e| e.ids.len()))
        .collect();
    let mut predictions: Vec<Vec<Option<Prediction>>> = planned
        .iter()
        .map(|p| {
            p.as_ref()
                .map_or(Vec::new(), |p| vec![None; p.inputs.len()])
        })
        .collect();
    let mut done = 0;
    for batch in plan_batches(&lengths, opts) {
        let inputs: Vec<_> = batch.iter().filter_map(|&k| input(&pool[k])).collect();
        let preds = engine.predict_keeping(&inputs, keep)?;
        for (&k, p) in batch.iter().zip(preds) {
            let (i, j) = pool[k];
            predictions[i][j] = Some(p);
        }
        done += batch.len();
        report(done as f64 / pool.len().max(1) as f64);
    }
    Ok(planned
        .into_iter()
        .zip(predictions)
        .zip(items)
        .map(|((planned, preds), item)| answer(task, item, planned?, preds))
        .collect())
}

/// Puts a record's parts together, refusing non-finite results.
fn answer(task: &Task, item: &Item, planned: Planned, preds: Vec<Option<Prediction>>) -> Outcome {
    let preds: Vec<Prediction> = preds
        .into_iter()
        .collect::<Option<_>>()
        .ok_or("internal error: missing prediction")?;
    if let Some(p) = preds
        .iter()
        .find(|p| !p.logits.iter().all(|x| x.is_finite()))
    {
        return Err(format!(
            "input {}: the model produced non-finite values (logits {:?}), not an answer; \
             likely NaN or infinite weights in the checkpoint, or an overflow in half precision (try --dtype f32)",
            item.number, p.logits
        ));
    }
    let prediction = task
        .combine(&preds)
        .map_err(|e| format!("input {}: {e:#}", item.number))?;
    let chunked = matches!(task, Task::Classify(crate::task::LongText::Chunk { .. }));
    let parts = planned
        .inputs
        .into_iter()
        .zip(planned.texts)
        .zip(planned.pairs)
        .zip(preds)
        .map(|(((input, text), text_pair), prediction)| Part {
            input,
            prediction,
            text,
            text_pair,
        })
        .collect();
    Ok(Answer {
        parts,
        prediction,
        chunked,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::thread;

    use super::{next_window, plan_batches, Arrival, Item, PipelineOptions, STREAM_WAIT};

    fn item(number: usize) -> Item {
        Item {
            number,
            ..Item::default()
        }
    }

    /// When the reader sends records 2, 3 and 4.
    #[derive(Clone, Copy)]
    enum Send {
        /// All before the window starts.
        Before,
        /// `STREAM_WAIT` apart, while the window is being cut.
        Slowly,
        /// Only after the window is cut: it cannot have waited for them.
        After,
    }

    /// The numbers in the window after record 1, and whether it ended in a failed read,
    /// from a reader that sends records 2, 3 and 4 as `send` says, then a read error if
    /// `fail`.
    fn window_after(arrival: Arrival, send: Send, fail: bool) -> (Vec<usize>, bool) {
        let (tx, rx) = sync_channel(8);
        let (go, wait) = sync_channel::<()>(1);
        let reader = thread::spawn(move || {
            if let Send::After = send {
                wait.recv().unwrap();
            }
            for n in 2..=4 {
                if let Send::Slowly = send {
                    thread::sleep(STREAM_WAIT);
                }
                tx.send(Ok(item(n))).unwrap();
            }
            if fail {
                tx.send(Err(anyhow::anyhow!("disk gone"))).unwrap();
            }
        });
        if let Send::Before = send {
            while !reader.is_finished() {
                thread::yield_now();
            }
        }
        let (items, failure) = next_window(&rx, item(1), 8, arrival);
        let _ = go.send(());
        reader.join().unwrap();
        (items.iter().map(|i| i.number).collect(), failure.is_some())
    }

    #[test]
    fn windows_wait_for_complete_input_and_not_for_a_terminal() {
        // A file or arguments: however slow the reader, the window holds every record.
        assert_eq!(
            window_after(Arrival::Ready, Send::Slowly, false),
            (vec![1, 2, 3, 4], false)
        );
        // A pipe: what comes within the wait; a writer that pauses is not awaited.
        assert_eq!(
            window_after(Arrival::Stream, Send::After, false),
            (vec![1], false)
        );
        assert_eq!(
            window_after(Arrival::Stream, Send::Before, false),
            (vec![1, 2, 3, 4], false)
        );
        // A terminal: only what is already read.
        assert_eq!(
            window_after(Arrival::Typed, Send::After, false),
            (vec![1], false)
        );
        // A full window is cut whatever the input.
        let (tx, rx) = sync_channel(16);
        for n in 2..=12 {
            tx.send(Ok(item(n))).unwrap();
        }
        let (items, _) = next_window(&rx, item(1), 8, Arrival::Ready);
        assert_eq!(items.len(), 8);
    }

    #[test]
    fn a_failed_read_ends_the_window_and_keeps_the_records_before_it() {
        for arrival in [Arrival::Ready, Arrival::Stream, Arrival::Typed] {
            assert_eq!(
                window_after(arrival, Send::Before, true),
                (vec![1, 2, 3, 4], true),
                "{arrival:?}"
            );
        }
    }

    #[test]
    fn batches_are_sorted_and_respect_both_limits() {
        // Count, then tokens (5+... fits, 2 x 300 does not), then attention cells: two
        // 100-token inputs are 200 tokens but 20,000 > 64 x 250 cells, so they go alone.
        let lengths = [5, 100, 7, 6, 100, 8, 100, 300, 9, 10];
        let opts = PipelineOptions {
            batch_size: 3,
            max_batch_tokens: 250,
            warn: false,
        };
        let batches = plan_batches(&lengths, opts);
        assert_eq!(
            batches,
            vec![
                vec![0, 3, 2],
                vec![5, 8, 9],
                vec![1],
                vec![4],
                vec![6],
                vec![7]
            ]
        );
        let long = plan_batches(
            &[512; 8],
            PipelineOptions {
                batch_size: 32,
                max_batch_tokens: 8192,
                warn: false,
            },
        );
        assert!(long.iter().all(|b| b.len() == 2), "{long:?}");
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(
            all,
            (0..lengths.len()).collect::<Vec<_>>(),
            "every input exactly once"
        );
    }
}
