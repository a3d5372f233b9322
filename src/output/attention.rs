//! `--dump-attention FILE`: per input, the tokens and every head's attention matrix.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::Record;

/// A JSON array with one object per classified input, written as results arrive.
/// The file is created up front so a bad path fails before any model work.
pub struct AttentionDump {
    out: BufWriter<File>,
    path: PathBuf,
    model: String,
    labels: Vec<String>,
    written: usize,
}

/// One entry of the dump; the README documents these fields.
#[derive(Serialize)]
struct Entry<'a> {
    model: &'a str,
    record: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
    tokens: &'a [String],
    token_ids: &'a [u32],
    offsets: &'a [(usize, usize)],
    num_layers: usize,
    num_heads: usize,
    attention: &'a [Vec<Vec<Vec<f32>>>],
    prediction: PredictionEntry<'a>,
}

#[derive(Serialize)]
struct PredictionEntry<'a> {
    label: &'a str,
    score: f32,
    labels: &'a [String],
    probs: &'a [f32],
    logits: &'a [f32],
}

impl AttentionDump {
    /// Creates (truncates) `path` now, before any slow work; `model` and `labels` are
    /// filled in by [`AttentionDump::describe`] once the model is loaded.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create attention dump {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(b"[")
            .with_context(|| format!("cannot write attention dump {}", path.display()))?;
        Ok(Self {
            out,
            path: path.to_path_buf(),
            model: String::new(),
            labels: Vec::new(),
            written: 0,
        })
    }

    /// Names the model and its labels for every entry written from now on.
    pub fn describe(&mut self, model: &str, labels: &[String]) {
        self.model = model.to_string();
        self.labels = labels.to_vec();
    }

    /// Appends one input; failed inputs have no attention and are skipped.
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let Ok((enc, p)) = r.outcome else {
            return Ok(());
        };
        let Some(attention) = p.attention.as_deref() else {
            return Ok(());
        };
        let entry = Entry {
            model: &self.model,
            record: r.item.number,
            id: r.item.id.as_deref(),
            text: &r.item.text,
            tokens: &enc.tokens,
            token_ids: &enc.ids,
            offsets: &enc.offsets,
            num_layers: attention.len(),
            num_heads: attention.first().map_or(0, Vec::len),
            attention,
            prediction: PredictionEntry {
                label: &self.labels[p.top],
                score: p.probs[p.top],
                labels: &self.labels,
                probs: &p.probs,
                logits: &p.logits,
            },
        };
        let sep: &[u8] = if self.written == 0 { b"\n" } else { b",\n" };
        self.out
            .write_all(sep)
            .and_then(|_| serde_json::to_writer(&mut self.out, &entry).map_err(io::Error::from))
            .with_context(|| format!("cannot write attention dump {}", self.path.display()))?;
        self.written += 1;
        Ok(())
    }

    /// Closes the JSON array and flushes the file.
    pub fn finish(mut self) -> Result<()> {
        self.out
            .write_all(b"\n]\n")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("cannot write attention dump {}", self.path.display()))
    }
}
