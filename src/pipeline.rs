//! Streams inputs through the engine in batches and hands results to the outputs in input
//! order. A reader thread keeps memory bounded; a window of inputs is cut as soon as no
//! more input is waiting, so an interactive pipe sees each answer without waiting for end
//! of input. Within a window, inputs are sorted by length so each padded batch wastes
//! little work on padding, then results are put back in input order.

use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::thread;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::engine::{Engine, Prediction};
use crate::input::{Item, Records};
use crate::output::attention::AttentionDump;
use crate::output::{Format, Record};
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
/// beat 8 by 8% on mixed-length review snippets; a window is cut early anyway whenever
/// no more input is waiting, so an interactive stream still answers line by line.
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
    let window = opts.batch_size.max(1) * WINDOW_BATCHES;
    let mut summary = Summary::default();
    let rx = spawn_reader(records, window * 2);
    loop {
        let first = match rx.recv() {
            Ok(item) => item?,
            Err(_) => break,
        };
        let mut items = vec![first];
        while items.len() < window {
            match rx.try_recv() {
                Ok(item) => items.push(item?),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let results = classify_window(engine, task, &items, dump.is_some(), opts)?;
        progress.suspend(|| -> Result<()> {
            for (item, result) in items.iter().zip(&results) {
                let outcome = match result {
                    Ok(answer) => {
                        summary.truncated += usize::from(answer.truncated());
                        summary.model_inputs += answer.parts.len();
                        Ok(answer)
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
    }
    if !quiet && summary.failed > MAX_WARNINGS {
        eprintln!(
            "bert-cli: warning: {} more inputs failed (not shown above; each has an error record in the output)",
            summary.failed - MAX_WARNINGS
        );
    }
    Ok(summary)
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
    keep_attention: bool,
    opts: PipelineOptions,
) -> Result<Vec<Outcome>> {
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
    for batch in plan_batches(&lengths, opts) {
        let inputs: Vec<_> = batch.iter().filter_map(|&k| input(&pool[k])).collect();
        let preds = engine.predict(&inputs, keep_attention)?;
        for (&k, p) in batch.iter().zip(preds) {
            let (i, j) = pool[k];
            predictions[i][j] = Some(p);
        }
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
    use super::{plan_batches, PipelineOptions};

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
