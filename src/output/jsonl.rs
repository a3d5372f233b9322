//! `--format jsonl`: one JSON object per input line.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::{Format, FormatOptions, Record};

/// `{"line", "text", "label", "score"}`, plus `"scores"` and `"logits"` with `--all-scores`,
/// or `{"line", "text", "error"}` for an input that could not be classified.
pub struct Jsonl {
    out: Box<dyn Write>,
    opts: FormatOptions,
}

impl Jsonl {
    /// A writer over `out`.
    pub fn new(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        Self { out, opts }
    }
}

impl Format for Jsonl {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let mut obj = Map::new();
        obj.insert("line".into(), json!(r.line));
        obj.insert("text".into(), json!(r.text));
        match r.outcome {
            Ok((_, p)) => {
                obj.insert("label".into(), json!(self.opts.labels[p.top]));
                obj.insert("score".into(), json!(p.probs[p.top]));
                if self.opts.all_scores {
                    let scores: Map<String, Value> = self
                        .opts
                        .labels
                        .iter()
                        .zip(&p.probs)
                        .map(|(l, s)| (l.clone(), json!(s)))
                        .collect();
                    obj.insert("scores".into(), Value::Object(scores));
                    obj.insert("logits".into(), json!(p.logits));
                }
            }
            Err(e) => {
                obj.insert("error".into(), json!(e));
            }
        }
        serde_json::to_writer(&mut self.out, &obj)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
