//! `rerank`'s output: the documents best first, each with its original index. The ranking
//! needs every score, so results are held (only the best `--top-k` of them when given,
//! so memory stays bounded) and written when the input ends.

use std::io::{self, Write};

use serde_json::{json, Map, Value};

use super::delimited::field;
use super::human::printable;
use super::{Format, FormatKind, Record};
use crate::input::Carried;

/// The columns a CSV/TSV input row gets (prefixed with the output key if one clashes).
const ADDED: [&str; 4] = ["rank", "index", "score", "error"];

/// One document, held until the ranking is complete.
struct Held {
    /// 0-based position in the input (as TEI's `/rerank` and sentence-transformers'
    /// `rank` number documents).
    index: usize,
    id: Option<String>,
    text: String,
    carried: Carried,
    /// The score, or why there is none.
    score: Result<f32, String>,
}

/// The ranking writer.
pub struct Ranked {
    out: Box<dyn Write>,
    kind: FormatKind,
    key: String,
    top_k: Option<usize>,
    ids: bool,
    columns: Option<Vec<String>>,
    held: Vec<Held>,
    failed: Vec<Held>,
}

impl Ranked {
    /// A writer of `kind` over `out`; `columns` are a CSV/TSV input's (its rows come back
    /// out in CSV/TSV), `key` the JSONL key a JSONL input object gets its rank under.
    pub fn new(
        out: Box<dyn Write>,
        kind: FormatKind,
        key: String,
        top_k: Option<usize>,
        ids: bool,
        columns: Option<Vec<String>>,
    ) -> Self {
        Self {
            out,
            kind,
            key,
            top_k,
            ids,
            columns: columns.filter(|_| matches!(kind, FormatKind::Csv | FormatKind::Tsv)),
            held: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Best first; equal scores in input order.
    fn sort(&mut self) {
        self.held.sort_by(|a, b| {
            let (x, y) = (a.score.as_ref().ok(), b.score.as_ref().ok());
            y.partial_cmp(&x)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.index.cmp(&b.index))
        });
        if let Some(k) = self.top_k {
            self.held.truncate(k);
        }
    }

    fn sep(&self) -> u8 {
        if self.kind == FormatKind::Tsv {
            b'\t'
        } else {
            b','
        }
    }

    fn row(&mut self, fields: &[String]) -> io::Result<()> {
        let sep = self.sep();
        let line: Vec<String> = fields.iter().map(|f| field(f, sep).into_owned()).collect();
        self.out
            .write_all(line.join(&(sep as char).to_string()).as_bytes())?;
        self.out.write_all(b"\n")
    }

    fn header(&mut self) -> io::Result<()> {
        let names: Vec<String> = match &self.columns {
            Some(columns) => {
                let clash = ADDED.iter().any(|a| columns.iter().any(|c| c == a));
                let added = ADDED.map(|a| {
                    if clash {
                        format!("{}_{a}", self.key)
                    } else {
                        a.to_string()
                    }
                });
                columns.iter().cloned().chain(added).collect()
            }
            None => {
                let mut names = vec!["rank".to_string(), "index".to_string()];
                if self.ids {
                    names.push("id".into());
                }
                names.extend(["score".to_string(), "text".to_string()]);
                names
            }
        };
        self.row(&names)
    }

    fn write_one(&mut self, rank: Option<usize>, h: &Held) -> io::Result<()> {
        let rank_text = rank.map_or(String::new(), |r| r.to_string());
        match self.kind {
            FormatKind::Human => match &h.score {
                Ok(s) => {
                    // Seven wide: raw scores may be negative.
                    write!(self.out, "{rank_text:>4}  {s:>7.4}  #{:<4} ", h.index)?;
                    if let Some(id) = &h.id {
                        write!(self.out, "{}  ", printable(id))?;
                    }
                    writeln!(self.out, "{}", printable(&h.text))
                }
                Err(e) => writeln!(self.out, "ERROR  -       #{:<4} {}", h.index, printable(e)),
            },
            FormatKind::Jsonl => {
                let mut result = Map::new();
                if h.score.is_ok() {
                    result.insert("rank".into(), json!(rank));
                }
                // A compact object has the index at its front; a carried one here.
                if matches!(h.carried, Carried::Json(_)) {
                    result.insert("index".into(), json!(h.index));
                }
                match &h.score {
                    Ok(s) => result.insert("score".into(), json!(s)),
                    Err(e) => result.insert("error".into(), json!(e)),
                };
                if let Carried::Json(input) = &h.carried {
                    self.out.write_all(b"{")?;
                    for (k, v) in &input.0 {
                        if *k != self.key {
                            serde_json::to_writer(&mut self.out, k)?;
                            write!(self.out, ":{},", v.get())?;
                        }
                    }
                    serde_json::to_writer(&mut self.out, &self.key)?;
                    self.out.write_all(b":")?;
                    serde_json::to_writer(&mut self.out, &result)?;
                    return self.out.write_all(b"}\n");
                }
                let mut obj = Map::new();
                obj.insert("index".into(), json!(h.index));
                if self.ids {
                    obj.insert("id".into(), json!(h.id));
                }
                obj.insert("text".into(), json!(h.text));
                obj.append(&mut result);
                serde_json::to_writer(&mut self.out, &Value::Object(obj))?;
                self.out.write_all(b"\n")
            }
            FormatKind::Csv | FormatKind::Tsv => {
                let score = h
                    .score
                    .as_ref()
                    .map_or(String::new(), |s| format!("{s:.6}"));
                let error = h.score.as_ref().err().cloned().unwrap_or_default();
                let fields: Vec<String> = match (&self.columns, &h.carried) {
                    (Some(_), Carried::Row(row)) => row
                        .iter()
                        .cloned()
                        .chain([rank_text, h.index.to_string(), score, error])
                        .collect(),
                    _ => {
                        let mut f = vec![rank_text, h.index.to_string()];
                        if self.ids {
                            f.push(h.id.clone().unwrap_or_default());
                        }
                        f.push(score);
                        f.push(if h.score.is_ok() {
                            h.text.clone()
                        } else {
                            error
                        });
                        f
                    }
                };
                self.row(&fields)
            }
        }
    }
}

impl Format for Ranked {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let held = Held {
            index: r.item.number.saturating_sub(1),
            id: r.item.id.clone(),
            text: r.item.text.clone(),
            carried: r.item.carried.clone(),
            score: match r.outcome {
                Ok(a) => Ok(a.prediction.probs[0]),
                Err(e) => Err(e.to_string()),
            },
        };
        if held.score.is_err() {
            self.failed.push(held);
            return Ok(());
        }
        self.held.push(held);
        // Only the best K can be printed: keep memory to 2K documents.
        if let Some(k) = self.top_k {
            if self.held.len() >= k.max(512).saturating_mul(2) {
                self.sort();
            }
        }
        Ok(())
    }

    /// Nothing until the ranking is complete.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.sort();
        if matches!(self.kind, FormatKind::Csv | FormatKind::Tsv) {
            self.header()?;
        }
        let held = std::mem::take(&mut self.held);
        for (i, h) in held.iter().enumerate() {
            self.write_one(Some(i + 1), h)?;
        }
        // Documents that could not be scored come last, in input order, so none is lost.
        let failed = std::mem::take(&mut self.failed);
        for h in &failed {
            self.write_one(None, h)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Prediction;
    use crate::input::Item;
    use crate::task::{Answer, Part};
    use std::sync::{Arc, Mutex};

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn answer(score: f32) -> Answer {
        let prediction = Prediction {
            logits: vec![score],
            probs: vec![score],
            top: 0,
            attention: None,
        };
        Answer {
            parts: vec![Part {
                input: Default::default(),
                prediction: prediction.clone(),
                text: None,
                text_pair: None,
            }],
            prediction,
            chunked: false,
        }
    }

    #[test]
    fn best_first_with_top_k_and_failures_last() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut w = Ranked::new(
            Box::new(Shared(buf.clone())),
            FormatKind::Jsonl,
            "prediction".into(),
            Some(2),
            false,
            None,
        );
        let scores = [0.1, 0.9, 0.5, 0.9];
        for (i, s) in scores.iter().enumerate() {
            let item = Item {
                number: i + 1,
                text: format!("d{i}"),
                ..Item::default()
            };
            let a = answer(*s);
            w.write(&Record {
                item: &item,
                outcome: Ok(&a),
            })
            .unwrap();
        }
        let bad = Item {
            number: 5,
            text: "x".into(),
            ..Item::default()
        };
        w.write(&Record {
            item: &bad,
            outcome: Err("broken"),
        })
        .unwrap();
        assert!(buf.lock().unwrap().is_empty(), "nothing before the end");
        w.finish().unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let order: Vec<u64> = lines.iter().map(|v| v["index"].as_u64().unwrap()).collect();
        assert_eq!(
            order,
            [1, 3, 4],
            "ties in input order, top 2, then the failure"
        );
        assert_eq!(lines[0]["rank"], 1);
        assert_eq!(lines[2]["error"], "broken");
    }
}
