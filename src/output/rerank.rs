//! `rerank`'s output: the documents best first, each with its original index, through
//! the same writers as every other command's (with `FormatOptions::ranking` set). The
//! ranking needs every score, so results are held (only the best `--top-k` of them when
//! given, so memory stays bounded) and written when the input ends.

use std::cmp::Ordering;
use std::io;

use super::{Format, Record, Scored};
use crate::input::Item;

/// Holds the documents until the ranking is complete, then writes them best first (and
/// the ones that could not be scored after them, in input order) through a writer.
pub struct Ranked {
    out: Box<dyn Format>,
    top_k: Option<usize>,
    /// Scored documents.
    held: Vec<(Item, f32)>,
    /// Documents that failed, and why.
    failed: Vec<(Item, String)>,
}

impl Ranked {
    /// Ranks into `out` (a writer made with `FormatOptions::ranking`), keeping only the
    /// best `top_k` documents when given.
    pub fn new(out: Box<dyn Format>, top_k: Option<usize>) -> Self {
        Self {
            out,
            top_k,
            held: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Best first; equal scores in input order.
    fn sort(&mut self) {
        self.held.sort_by(|(a, x), (b, y)| {
            y.partial_cmp(x)
                .unwrap_or(Ordering::Equal)
                .then(a.number.cmp(&b.number))
        });
        if let Some(k) = self.top_k {
            self.held.truncate(k);
        }
    }
}

impl Format for Ranked {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let score = match r.outcome {
            Ok(Scored::Answer(a)) => a.prediction.probs[0],
            Ok(Scored::Ranked { score, .. }) => score,
            Err(e) => {
                self.failed.push((r.item.clone(), e.to_string()));
                return Ok(());
            }
        };
        self.held.push((r.item.clone(), score));
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
        for (i, (item, score)) in std::mem::take(&mut self.held).iter().enumerate() {
            let outcome = Ok(Scored::Ranked {
                rank: i + 1,
                score: *score,
            });
            self.out.write(&Record { item, outcome })?;
        }
        // Documents that could not be scored come last, in input order, so none is lost.
        for (item, error) in &std::mem::take(&mut self.failed) {
            let outcome = Err(error.as_str());
            self.out.write(&Record { item, outcome })?;
        }
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Prediction;
    use crate::output::{writer, FormatKind, FormatOptions};
    use crate::task::{Answer, Part};
    use serde_json::Value;
    use std::io::Write;
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
            attention_rollout: None,
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
        let opts = FormatOptions {
            output_key: "prediction".into(),
            ranking: true,
            ..FormatOptions::default()
        };
        let out = writer(FormatKind::Jsonl, Box::new(Shared(buf.clone())), opts);
        let mut w = Ranked::new(out, Some(2));
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
                outcome: Ok(Scored::Answer(&a)),
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
