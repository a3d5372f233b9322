//! CSV (RFC 4180 quoting: quoted commas, doubled quotes, newlines inside quotes) and TSV
//! (tabs only, no quoting, as GLUE and most exported TSV files are written) through the
//! `csv` crate. The first row names the columns unless `--no-header`.

use std::io::Read;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use csv::{ByteRecord, ReaderBuilder};

use super::{place, Carried, InputFormat, InputOptions, Item, Records};

/// Keeps a copy of the bytes read, so each CSV record's raw text can be checked for an
/// unclosed quote, which the parser itself silently runs to the end of the file.
struct Tap {
    inner: Box<dyn Read + Send>,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.extend_from_slice(&out[..n]);
        }
        Ok(n)
    }
}

/// Opens a CSV/TSV stream: reads the header (or the first row), resolves the text and id
/// columns, and returns the rows as records.
pub fn open(reader: Box<dyn Read + Send>, name: &str, opts: &InputOptions) -> Result<Records> {
    if opts.null_data {
        bail!("--null-data splits plain lines; CSV/TSV rows end at newlines");
    }
    let csv = opts.format == InputFormat::Csv;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader: Box<dyn Read + Send> = if csv {
        Box::new(Tap {
            inner: reader,
            seen: seen.clone(),
        })
    } else {
        reader
    };
    let mut rdr = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(opts.delimiter.unwrap_or(if csv { b',' } else { b'\t' }))
        .quoting(csv)
        .from_reader(reader);
    let mut first = ByteRecord::new();
    let got = rdr
        .read_byte_record(&mut first)
        .with_context(|| format!("cannot read {name}"))?;
    let (columns, pending) = if opts.header {
        let names = if got {
            header_names(&first, name)?
        } else {
            Vec::new()
        };
        (names, None)
    } else {
        let names = (1..=first.len()).map(|i| i.to_string()).collect();
        (names, got.then_some(first))
    };
    let text = match &opts.field {
        Some(f) => column(f, &columns, opts.header, name, "--column")?,
        None if columns.iter().any(|c| c == "text") => {
            columns.iter().position(|c| c == "text").unwrap_or(0)
        }
        // One column whose name holds a ';' (or a tab): a file separated by something
        // else, which read as CSV would classify "1;good film" whole, silently.
        None if csv && opts.delimiter.is_none() && columns.len() == 1 && opts.header => {
            if let Some(sep) = [';', '\t', '|'].into_iter().find(|c| columns[0].contains(*c)) {
                bail!(
                    "{name} has one column, named {:?}: it looks separated by {sep:?}, not commas; \
                     pass --delimiter {:?} (or --column to take the whole line as the text)",
                    columns[0],
                    if sep == '\t' { "\\t".to_string() } else { sep.to_string() }
                );
            }
            0
        }
        None if columns.len() <= 1 => 0,
        None if opts.header => bail!(
            "{name} has columns {}; say which holds the text with --column NAME (or its number)",
            columns.join(", ")
        ),
        None => bail!(
            "{name} has {} columns and no header (--no-header); say which holds the text with --column N",
            columns.len()
        ),
    };
    let id = opts
        .id_field
        .as_deref()
        .map(|f| column(f, &columns, opts.header, name, "--id-column"))
        .transpose()?;
    let pair = opts
        .pair_field
        .as_deref()
        .map(|f| column(f, &columns, opts.header, name, "--pair-column"))
        .transpose()?;
    // The header line is not a record; data lines count from after it.
    let rows = Rows {
        rdr,
        seen: csv.then_some(seen),
        seen_from: 0,
        name: name.to_string(),
        width: columns.len(),
        text,
        id,
        pair,
        pending,
        number: 0,
        done: false,
    };
    Ok(Records {
        columns: Some(columns),
        items: Box::new(rows),
        arrival: super::Arrival::Stream,
        jsonl: false,
    })
}

/// Column names from the header row; every one must be UTF-8. A byte-order mark (as
/// spreadsheet programs write) is not part of the first name.
fn header_names(first: &ByteRecord, name: &str) -> Result<Vec<String>> {
    first
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let f = if i == 0 {
                f.strip_prefix("\u{feff}".as_bytes()).unwrap_or(f)
            } else {
                f
            };
            std::str::from_utf8(f)
                .map(str::to_string)
                .map_err(|_| anyhow::anyhow!("{name}: header column {} is not valid UTF-8", i + 1))
        })
        .collect()
}

/// The index of column `wanted`: a header name, else a 1-based number.
fn column(wanted: &str, columns: &[String], header: bool, name: &str, flag: &str) -> Result<usize> {
    if header {
        if let Some(i) = columns.iter().position(|c| c == wanted) {
            return Ok(i);
        }
    }
    match wanted.parse::<usize>() {
        Ok(n) if n >= 1 && n <= columns.len() => Ok(n - 1),
        _ if header => bail!(
            "{flag} {wanted}: {name} has no such column (columns: {})",
            columns.join(", ")
        ),
        _ => bail!(
            "{flag} {wanted}: without a header, name a column by number, 1 to {}",
            columns.len()
        ),
    }
}

/// The data rows.
struct Rows {
    rdr: csv::Reader<Box<dyn Read + Send>>,
    seen: Option<Arc<Mutex<Vec<u8>>>>,
    /// Stream offset of `seen`'s first byte.
    seen_from: u64,
    name: String,
    width: usize,
    text: usize,
    id: Option<usize>,
    pair: Option<usize>,
    /// The first row, already read when there is no header.
    pending: Option<ByteRecord>,
    number: usize,
    done: bool,
}

impl Rows {
    /// Whether the raw bytes from `start` to `end` hold an odd number of quotes across
    /// more than one line: a quote opened and never closed, so the parser took the
    /// following lines (to the end of the file, or the next stray quote) as one field.
    fn unbalanced(&mut self, start: u64, end: u64) -> bool {
        let Some(seen) = &self.seen else {
            return false;
        };
        let Ok(mut seen) = seen.lock() else {
            return false;
        };
        let from = (start.saturating_sub(self.seen_from) as usize).min(seen.len());
        let to = (end.saturating_sub(self.seen_from) as usize).min(seen.len());
        let raw = &seen[from..to];
        let quotes = raw.iter().filter(|&&b| b == b'"').count();
        let body = raw.strip_suffix(b"\n").unwrap_or(raw);
        let bad = quotes % 2 == 1 && body.contains(&b'\n');
        seen.drain(..to);
        self.seen_from += to as u64;
        bad
    }
}

impl Iterator for Rows {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let start = self.rdr.position().byte();
        let record = match self.pending.take() {
            Some(r) => r,
            None => {
                let mut r = ByteRecord::new();
                match self.rdr.read_byte_record(&mut r) {
                    Ok(true) => r,
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(anyhow::Error::new(e).context(format!(
                            "cannot read {} after record {}",
                            self.name, self.number
                        ))));
                    }
                }
            }
        };
        let end = self.rdr.position().byte();
        self.number += 1;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let end_line = self.rdr.position().line() as usize;
        let at = place(&self.name, self.number, line);
        let mut item = Item {
            number: self.number,
            end_byte: end,
            ..Item::default()
        };
        let mut fields = Vec::with_capacity(self.width);
        let mut error = None;
        for (i, raw) in record.iter().enumerate() {
            let text = match std::str::from_utf8(raw) {
                Ok(s) => s.to_string(),
                Err(e) => {
                    error.get_or_insert_with(|| {
                        format!(
                            "{at}: column {} is not valid UTF-8 (bad byte at column {} of the field); skipped",
                            i + 1,
                            e.valid_up_to() + 1
                        )
                    });
                    String::from_utf8_lossy(raw).into_owned()
                }
            };
            fields.push(text);
        }
        if self.unbalanced(start, end) {
            error = Some(format!(
                "{at}: a quote opened in this record is never closed, so lines {line} to {} were read as one record; check the quotes on line {line}",
                end_line.saturating_sub(1).max(line)
            ));
        } else if fields.len() != self.width && error.is_none() {
            error = Some(format!(
                "{at}: {} fields, but the header has {}",
                fields.len(),
                self.width
            ));
        }
        item.text = fields.get(self.text).cloned().unwrap_or_default();
        item.id = self.id.and_then(|i| fields.get(i).cloned());
        item.pair = self
            .pair
            .map(|i| fields.get(i).cloned().unwrap_or_default());
        fields.resize(self.width, String::new());
        item.carried = Carried::Row(fields);
        item.error = error;
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        data: &'static str,
        format: InputFormat,
        opts: InputOptions,
    ) -> (Vec<String>, Vec<Item>) {
        let opts = InputOptions { format, ..opts };
        let r = open(Box::new(data.as_bytes()), "in.csv", &opts).unwrap();
        (r.columns.unwrap(), r.items.map(|i| i.unwrap()).collect())
    }

    #[test]
    fn quoted_commas_doubled_quotes_and_newlines() {
        let (cols, items) = read(
            "\u{feff}id,review,stars\n1,\"good, really\",5\n2,\"she said \"\"no\"\"\",1\n3,\"two\nlines\",3\n",
            InputFormat::Csv,
            InputOptions {
                field: Some("review".into()),
                id_field: Some("id".into()),
                ..InputOptions::default()
            },
        );
        assert_eq!(
            cols,
            ["id", "review", "stars"],
            "the byte-order mark is dropped"
        );
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, ["good, really", "she said \"no\"", "two\nlines"]);
        assert_eq!(items[2].id.as_deref(), Some("3"));
        assert!(items.iter().all(|i| i.error.is_none()));
    }

    #[test]
    fn wrong_width_and_unclosed_quote_are_named() {
        let (_, items) = read(
            "id,text\n1,fine\n2,too,many\n3,\"never closed\n4,lost\n5,lost too\n",
            InputFormat::Csv,
            InputOptions::default(),
        );
        assert_eq!(items.len(), 3);
        let e = items[1].error.as_deref().unwrap();
        assert!(
            e.contains("in.csv record 2 (line 3): 3 fields, but the header has 2"),
            "{e}"
        );
        let e = items[2].error.as_deref().unwrap();
        assert!(
            e.contains("never closed") && e.contains("lines 4 to 6"),
            "{e}"
        );
    }

    #[test]
    fn tsv_has_no_quoting_and_columns_can_be_numbers() {
        let (cols, items) = read(
            "\"quoted\" start\t1\nplain\t0\n",
            InputFormat::Tsv,
            InputOptions {
                header: false,
                field: Some("1".into()),
                ..InputOptions::default()
            },
        );
        assert_eq!(cols, ["1", "2"]);
        assert_eq!(items[0].text, "\"quoted\" start");
        assert_eq!(items[1].number, 2);
    }

    #[test]
    fn a_missing_column_fails_before_any_record() {
        let opts = InputOptions {
            format: InputFormat::Csv,
            field: Some("body".into()),
            ..InputOptions::default()
        };
        let err = open(Box::new(&b"id,text\n1,x\n"[..]), "in.csv", &opts)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("no such column (columns: id, text)"),
            "{err}"
        );
        let opts = InputOptions {
            format: InputFormat::Csv,
            ..InputOptions::default()
        };
        let err = open(Box::new(&b"id,review\n1,x\n"[..]), "in.csv", &opts)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--column"), "{err}");
    }
}
