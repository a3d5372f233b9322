//! `--format jsonl`: one JSON object per input record.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::{index, Format, FormatOptions, Record, Scored};
use crate::engine::Prediction;
use crate::input::{Carried, JsonObject};
use crate::task::Answer;

/// For a JSONL input object: the object as it came (values byte for byte) with the
/// prediction added under `output_key`. Otherwise compact: `{"record", ["id",] "text",
/// "label", "score", ...}`. A failed input has `"error"` (and, carried, `"record"`)
/// in place of the prediction. A ranking's result is `{"rank", "score"}` (carried, with
/// `"index"` between them), after `"index"`, [`"id"`,] `"text"` when compact.
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

    /// The input object as it came, the input's own bytes for every value so nothing in
    /// it changes, with `result` under `output_key` (last; in place of any value it had).
    fn splice(&mut self, input: &JsonObject, result: &Map<String, Value>) -> io::Result<()> {
        self.out.write_all(b"{")?;
        for (k, v) in &input.0 {
            if *k != self.opts.output_key {
                serde_json::to_writer(&mut self.out, k)?;
                write!(self.out, ":{},", v.get())?;
            }
        }
        serde_json::to_writer(&mut self.out, &self.opts.output_key)?;
        self.out.write_all(b":")?;
        serde_json::to_writer(&mut self.out, result)?;
        self.out.write_all(b"}\n")
    }
}

impl Format for Jsonl {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let carried = matches!(r.item.carried, Carried::Json(_));
        // Where the record stands: its number, or a ranked document's index.
        let (place, at) = if self.opts.ranking {
            ("index", index(r.item))
        } else {
            ("record", r.item.number)
        };
        let mut result = Map::new();
        match r.outcome {
            Ok(Scored::Answer(a)) => self.prediction(a, &mut result),
            Ok(Scored::Ranked { rank, score }) => {
                result.insert("rank".into(), json!(rank));
                if carried {
                    result.insert(place.into(), json!(at));
                }
                result.insert("score".into(), json!(score));
            }
            Err(e) => {
                if carried && self.opts.ranking {
                    result.insert(place.into(), json!(at));
                }
                result.insert("error".into(), json!(e));
                if carried && !self.opts.ranking {
                    result.insert(place.into(), json!(at));
                }
            }
        }
        if let Carried::Json(input) = &r.item.carried {
            return self.splice(input, &result);
        }
        // A CSV/TSV row comes back as an object of its columns, every one of them (not
        // only the id), with the result under the key, as a JSON Lines object would.
        if let (Carried::Row(fields), Some(columns)) = (&r.item.carried, &self.opts.columns) {
            let mut obj = Map::new();
            for (name, value) in columns.iter().zip(fields) {
                if *name != self.opts.output_key {
                    obj.insert(name.clone(), json!(value));
                }
            }
            if self.opts.ranking || result.contains_key("error") {
                result.insert(place.into(), json!(at));
            }
            obj.insert(self.opts.output_key.clone(), Value::Object(result));
            serde_json::to_writer(&mut self.out, &obj)?;
            return self.out.write_all(b"\n");
        }
        // A JSON Lines record with no object to carry (a string line, or one that could
        // not be read) gets its result where the others have it; otherwise compact.
        let mut obj = Map::new();
        obj.insert(place.into(), json!(at));
        if self.opts.ids {
            obj.insert("id".into(), json!(r.item.id));
        }
        obj.insert("text".into(), json!(r.item.text));
        if let Some(pair) = &r.item.pair {
            obj.insert("text_pair".into(), json!(pair));
        }
        if self.opts.keyed {
            obj.insert(self.opts.output_key.clone(), Value::Object(result));
        } else {
            obj.append(&mut result);
        }
        serde_json::to_writer(&mut self.out, &obj)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
