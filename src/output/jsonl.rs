//! `--format jsonl`: one JSON object per input record.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::{Format, FormatOptions, Record};
use crate::engine::Prediction;
use crate::input::Carried;
use crate::task::Answer;

/// For a JSONL input object: the object as it came (values byte for byte) with the
/// prediction added under `output_key`. Otherwise compact: `{"record", ["id",] "text",
/// "label", "score", ...}`. A failed input has `"error"` (and, carried, `"record"`)
/// in place of the prediction.
pub struct Jsonl {
    out: Box<dyn Write>,
    opts: FormatOptions,
}

impl Jsonl {
    /// A writer over `out`.
    pub fn new(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        Self { out, opts }
    }

    /// `label`, `score`, then what the flags asked for, then `tokens` and `truncated`.
    fn prediction(&self, a: &Answer, obj: &mut Map<String, Value>) {
        let p: &Prediction = &a.prediction;
        let pairs = |xs: Vec<(&str, f32)>| -> Value {
            xs.into_iter()
                .map(|(l, s)| json!({"label": l, "score": s}))
                .collect()
        };
        obj.insert("label".into(), json!(self.opts.labels[p.top]));
        obj.insert("score".into(), json!(p.probs[p.top]));
        if let Some(top) = self.opts.top(p) {
            obj.insert("top_k".into(), pairs(top));
        }
        if let Some(above) = self.opts.above(p) {
            obj.insert("labels".into(), pairs(above));
        }
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
        obj.insert("tokens".into(), json!(a.tokens()));
        if a.chunked {
            obj.insert("chunks".into(), json!(a.parts.len()));
        }
        obj.insert("truncated".into(), json!(a.truncated()));
    }
}

impl Format for Jsonl {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let mut result = Map::new();
        match r.outcome {
            Ok(a) => self.prediction(a, &mut result),
            Err(e) => {
                result.insert("error".into(), json!(e));
            }
        }
        if let Carried::Json(input) = &r.item.carried {
            if r.outcome.is_err() {
                result.insert("record".into(), json!(r.item.number));
            }
            // The input's own bytes for every value, so nothing in it changes.
            self.out.write_all(b"{")?;
            for (k, v) in &input.0 {
                if *k != self.opts.output_key {
                    serde_json::to_writer(&mut self.out, k)?;
                    write!(self.out, ":{},", v.get())?;
                }
            }
            serde_json::to_writer(&mut self.out, &self.opts.output_key)?;
            self.out.write_all(b":")?;
            serde_json::to_writer(&mut self.out, &result)?;
            return self.out.write_all(b"}\n");
        }
        let mut obj = Map::new();
        obj.insert("record".into(), json!(r.item.number));
        if self.opts.ids {
            obj.insert("id".into(), json!(r.item.id));
        }
        obj.insert("text".into(), json!(r.item.text));
        if let Some(pair) = &r.item.pair {
            obj.insert("text_pair".into(), json!(pair));
        }
        obj.append(&mut result);
        serde_json::to_writer(&mut self.out, &obj)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
