//! Streams inputs through the engine in batches and hands results to the outputs in input
//! order. A reader thread keeps memory bounded; a batch is cut as soon as no more input is
//! waiting, so an interactive pipe sees each answer without waiting for end of input.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::thread;

use anyhow::{Context, Result};

use crate::engine::{Engine, Prediction};
use crate::output::attention::AttentionDump;
use crate::output::{Format, Record};
use crate::tokenize::Encoded;

/// Where the texts come from.
pub enum Source {
    /// Texts given on the command line, one input each.
    Args(Vec<String>),
    /// One input per line of a stream; `name` (e.g. `stdin`) appears in error messages.
    Lines {
        /// The stream.
        reader: Box<dyn Read + Send>,
        /// What to call it in messages.
        name: String,
    },
}

/// Batching knobs.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Most inputs per forward pass.
    pub batch_size: usize,
}

/// How a run went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Inputs seen.
    pub inputs: usize,
    /// Inputs that could not be classified (each reported in the output).
    pub failed: usize,
}

/// One input before tokenization.
struct Item {
    line: usize,
    text: String,
    /// Set when the line itself is unusable (e.g. not UTF-8); it still gets an output row.
    error: Option<String>,
}

/// Classifies everything `source` yields; results go to `out` (and `dump`) in input order.
pub fn run(
    engine: &Engine,
    source: Source,
    out: &mut dyn Format,
    mut dump: Option<&mut AttentionDump>,
    opts: PipelineOptions,
) -> Result<Summary> {
    let batch_size = opts.batch_size.max(1);
    let mut summary = Summary::default();
    let mut process = |items: Vec<Item>| -> Result<()> {
        summary.inputs += items.len();
        summary.failed += classify_batch(engine, &items, out, dump.as_deref_mut())?;
        out.flush().context("cannot write results")
    };
    match source {
        Source::Args(texts) => {
            let mut items = texts
                .into_iter()
                .enumerate()
                .map(|(i, text)| Item {
                    line: i + 1,
                    text,
                    error: None,
                })
                .peekable();
            while items.peek().is_some() {
                process(items.by_ref().take(batch_size).collect())?;
            }
        }
        Source::Lines { reader, name } => {
            let rx = spawn_reader(reader, name, batch_size * 4);
            loop {
                let first = match rx.recv() {
                    Ok(item) => item?,
                    Err(_) => break,
                };
                let mut items = vec![first];
                while items.len() < batch_size {
                    match rx.try_recv() {
                        Ok(item) => items.push(item?),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                process(items)?;
            }
        }
    }
    Ok(summary)
}

/// Reads lines on a thread into a bounded channel; a read error ends the stream with an error.
fn spawn_reader(
    reader: Box<dyn Read + Send>,
    name: String,
    capacity: usize,
) -> Receiver<Result<Item>> {
    let (tx, rx) = sync_channel(capacity);
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let mut buf = Vec::new();
        for line in 1.. {
            buf.clear();
            let item = match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => Ok(decode_line(&buf, line, &name)),
                Err(e) => {
                    Err(anyhow::Error::new(e).context(format!("cannot read {name} at line {line}")))
                }
            };
            let stop = item.is_err();
            if tx.send(item).is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// Strips the line ending; invalid UTF-8 becomes an error naming the line and byte.
fn decode_line(raw: &[u8], line: usize, name: &str) -> Item {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    match std::str::from_utf8(raw) {
        Ok(s) => Item {
            line,
            text: s.to_string(),
            error: None,
        },
        Err(e) => Item {
            line,
            text: String::from_utf8_lossy(raw).into_owned(),
            error: Some(format!(
                "{name} line {line}: not valid UTF-8 (bad byte at column {}); skipped",
                e.valid_up_to() + 1
            )),
        },
    }
}

/// Tokenizes and classifies one batch; returns how many inputs failed.
fn classify_batch(
    engine: &Engine,
    items: &[Item],
    out: &mut dyn Format,
    mut dump: Option<&mut AttentionDump>,
) -> Result<usize> {
    let encoded: Vec<Result<Encoded, String>> = items
        .iter()
        .map(|item| match &item.error {
            Some(e) => Err(e.clone()),
            None => engine
                .encode(&item.text)
                .map_err(|e| format!("input {}: {e:#}", item.line)),
        })
        .collect();
    let ok: Vec<&Encoded> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
    let mut predictions = engine.predict(&ok, dump.is_some())?.into_iter();
    let mut failed = 0;
    for (item, enc) in items.iter().zip(&encoded) {
        let prediction: Option<Prediction> = enc.as_ref().ok().and_then(|_| predictions.next());
        let outcome = match (enc, &prediction) {
            (Ok(enc), Some(p)) => Ok((enc, p)),
            (Err(e), _) => Err(e.as_str()),
            (Ok(_), None) => Err("internal error: missing prediction"),
        };
        if let Err(e) = outcome {
            failed += 1;
            eprintln!("bert-cli: warning: {e}");
        }
        let record = Record {
            line: item.line,
            text: &item.text,
            outcome,
        };
        out.write(&record).context("cannot write results")?;
        if let Some(d) = dump.as_deref_mut() {
            d.write(&record)?;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::decode_line;

    #[test]
    fn line_endings_are_stripped_and_bad_utf8_is_named() {
        assert_eq!(decode_line(b"hi\r\n", 1, "stdin").text, "hi");
        let bad = decode_line(b"ok\xffno\n", 7, "stdin");
        let err = bad.error.unwrap();
        assert!(
            err.contains("stdin line 7") && err.contains("column 3"),
            "{err}"
        );
        assert_eq!(bad.text, "ok\u{fffd}no");
    }
}
