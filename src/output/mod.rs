//! Where results go: one writer per output format behind a small trait, plus the
//! attention dump file.

pub mod attention;
pub mod human;
pub mod jsonl;
pub mod tsv;

use std::io::{self, Write};

use crate::engine::Prediction;
use crate::tokenize::Encoded;

/// The result for one input line (or argument), in input order.
pub struct Record<'a> {
    /// 1-based position of the input: line number on stdin, argument number otherwise.
    pub line: usize,
    /// The input text (lossily decoded when it was not valid UTF-8).
    pub text: &'a str,
    /// The prediction and the tokens it was made from, or why this input failed.
    pub outcome: Result<(&'a Encoded, &'a Prediction), &'a str>,
}

/// An output format.
pub trait Format {
    /// Writes one record.
    fn write(&mut self, record: &Record) -> io::Result<()>;
    /// Pushes everything written so far to the reader downstream.
    fn flush(&mut self) -> io::Result<()>;
}

/// What every format needs to know besides the records.
#[derive(Clone)]
pub struct FormatOptions {
    /// Label names by index.
    pub labels: Vec<String>,
    /// Also print every label's probability.
    pub all_scores: bool,
}

/// The formats `--format` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatKind {
    /// Aligned columns for people.
    Human,
    /// One JSON object per line.
    Jsonl,
    /// Tab-separated columns for `cut`, `awk` and spreadsheets.
    Tsv,
}

/// Builds the writer for `kind` over `out`.
pub fn writer(kind: FormatKind, out: Box<dyn Write>, opts: FormatOptions) -> Box<dyn Format> {
    match kind {
        FormatKind::Human => Box::new(human::Human::new(out, opts)),
        FormatKind::Jsonl => Box::new(jsonl::Jsonl::new(out, opts)),
        FormatKind::Tsv => Box::new(tsv::Tsv::new(out, opts)),
    }
}
