//! Where results go: one writer per output format behind a small trait, plus the
//! attention dump file.

pub mod atomic;
pub mod attention;
pub mod delimited;
pub mod human;
pub mod jsonl;
pub mod rerank;

use std::io::{self, Write};

use crate::engine::Prediction;
use crate::input::Item;
use crate::task::Answer;

/// The result for one input record: in input order, or in a ranking's order.
pub struct Record<'a> {
    /// The input: number, text, id, and the object or row it came in.
    pub item: &'a Item,
    /// What the model made of it, or why this input failed.
    pub outcome: Result<Scored<'a>, &'a str>,
}

/// What the model made of one input record.
#[derive(Clone, Copy)]
pub enum Scored<'a> {
    /// The prediction and the model inputs it was made from (classify, zero-shot).
    Answer(&'a Answer),
    /// Its place in a ranking (rerank).
    Ranked {
        /// 1 for the best.
        rank: usize,
        /// The score it was ranked by.
        score: f32,
    },
}

/// A ranked document's 0-based position in the input (as TEI's `/rerank` and
/// sentence-transformers' `rank` number documents).
fn index(item: &Item) -> usize {
    item.number.saturating_sub(1)
}

/// An output format.
pub trait Format {
    /// Writes one record.
    fn write(&mut self, record: &Record) -> io::Result<()>;
    /// Pushes everything written so far to the reader downstream.
    fn flush(&mut self) -> io::Result<()>;
    /// Writes what was held back until the end (a sorted ranking), then flushes.
    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// What every format needs to know besides the records.
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// Label names by index.
    pub labels: Vec<String>,
    /// Also print every label's score, in label order (and the logits in JSONL).
    pub all_scores: bool,
    /// The best K labels, best first (`--top-k`); `None` without the flag.
    pub top_k: Option<usize>,
    /// Every label scoring above this is listed (`--threshold`; multi-label models by
    /// default); `None` lists nothing.
    pub threshold: Option<f32>,
    /// JSONL key (and CSV/TSV column prefix on a clash) under which a carried-through
    /// input gets its prediction.
    pub output_key: String,
    /// The CSV/TSV input's column names, when the input rows are to come back out (as
    /// rows in CSV/TSV, as objects of strings in JSONL).
    pub columns: Option<Vec<String>>,
    /// Whether `--id-field`/`--id-column` was given, so compact outputs have an id.
    pub ids: bool,
    /// Whether records are pairs, so compact CSV/TSV has a `text_pair` column.
    pub pairs: bool,
    /// Whether records are a ranking (rerank): each says its rank, 0-based index in the
    /// input and score, instead of labels.
    pub ranking: bool,
    /// JSONL: every record's result under `output_key`, also for a line of JSON Lines
    /// input that was a string or could not be read (no object to carry), so that every
    /// output line has the same shape (`jq .prediction`).
    pub keyed: bool,
}

impl FormatOptions {
    /// The best `--top-k` labels with their scores, best first (ties in label order).
    pub fn top(&self, p: &Prediction) -> Option<Vec<(&str, f32)>> {
        self.top_k.map(|k| self.ranked(p, k))
    }

    /// Labels scoring above the threshold, best first; `None` without a threshold.
    pub fn above(&self, p: &Prediction) -> Option<Vec<(&str, f32)>> {
        let t = self.threshold?;
        let mut all = self.ranked(p, p.probs.len());
        all.retain(|&(_, s)| s > t);
        Some(all)
    }

    /// The `k` best labels, best first.
    fn ranked(&self, p: &Prediction, k: usize) -> Vec<(&str, f32)> {
        let mut order: Vec<usize> = (0..p.probs.len()).collect();
        order.sort_by(|&a, &b| p.probs[b].total_cmp(&p.probs[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|i| (self.labels[i].as_str(), p.probs[i]))
            .collect()
    }
}

/// The formats `--format` offers (each value's first paragraph is its `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatKind {
    /// Aligned columns: [id,] label, score, text (rerank: rank, score, #index, text).
    Human,
    /// One JSON object per input: a JSONL input object with "prediction" added, or
    /// record, [id,] text, label, score, tokens, truncated (rerank: index, text, rank,
    /// score).
    Jsonl,
    /// Comma-separated with a header: a CSV/TSV input row with label, score, ..., error
    /// appended, or record, [id,] label, score, ..., text (rerank: rank, index, score,
    /// text).
    Csv,
    /// Tab-separated, like csv; tabs, newlines and backslashes in text escaped.
    Tsv,
}

/// Builds the writer for `kind` over `out`.
pub fn writer(kind: FormatKind, out: Box<dyn Write>, opts: FormatOptions) -> Box<dyn Format> {
    match kind {
        FormatKind::Human => Box::new(human::Human::new(out, opts)),
        FormatKind::Jsonl => Box::new(jsonl::Jsonl::new(out, opts)),
        FormatKind::Csv => Box::new(delimited::Delimited::csv(out, opts)),
        FormatKind::Tsv => Box::new(delimited::Delimited::tsv(out, opts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_threshold_rank_labels() {
        let p = Prediction {
            logits: vec![0.0; 4],
            probs: vec![0.2, 0.7, 0.2, 0.9],
            top: 3,
            attention: None,
            attention_rollout: None,
        };
        let opts = FormatOptions {
            labels: ["a", "b", "c", "d"].map(String::from).to_vec(),
            top_k: Some(3),
            threshold: Some(0.5),
            ..FormatOptions::default()
        };
        assert_eq!(opts.top(&p).unwrap(), [("d", 0.9), ("b", 0.7), ("a", 0.2)]);
        assert_eq!(opts.above(&p).unwrap(), [("d", 0.9), ("b", 0.7)]);
    }
}
