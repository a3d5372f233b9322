//! One record per line, or per NUL-terminated chunk (`-0`, as `xargs -0` and `sort -z`).

use std::io::{BufReader, Read};

use anyhow::Result;

use super::{decode, place, read_chunk, Item};

/// Splits a stream at `sep`; a final chunk without one is a record too, an empty one is not.
pub struct Lines {
    reader: BufReader<Box<dyn Read + Send>>,
    name: String,
    sep: u8,
    number: usize,
    bytes: u64,
    done: bool,
}

impl Lines {
    /// Records of `reader`, called `name` in messages, ending at `sep`.
    pub fn new(reader: Box<dyn Read + Send>, name: &str, sep: u8) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, reader),
            name: name.to_string(),
            sep,
            number: 0,
            bytes: 0,
            done: false,
        }
    }
}

impl Iterator for Lines {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        let what = if self.sep == b'\n' { "line" } else { "record" };
        let next = self.number + 1;
        let n = match read_chunk(&mut self.reader, self.sep, &mut buf, &self.name, what, next) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            None => {
                self.done = true;
                return None;
            }
        };
        self.number += 1;
        self.bytes += n as u64;
        let mut raw = buf.strip_suffix(&[self.sep]).unwrap_or(&buf);
        // A UTF-8 byte-order mark (Windows editors write one) is no part of the text.
        if self.number == 1 {
            raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
        }
        if self.sep == b'\n' {
            raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        }
        let number = self.number;
        let name = &self.name;
        let sep = self.sep;
        let (text, error) = match decode(raw, || {
            if sep == b'\n' {
                place(name, number, number)
            } else {
                format!("{name} record {number}")
            }
        }) {
            Ok(text) => (text, None),
            Err((text, e)) => (text, Some(e)),
        };
        Some(Ok(Item {
            number,
            text,
            error,
            end_byte: self.bytes,
            ..Item::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &'static [u8], sep: u8) -> Vec<Item> {
        Lines::new(Box::new(data), "stdin", sep)
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn line_endings_are_stripped_and_bad_utf8_is_named() {
        let items = read(b"hi\r\nok\xffno\nlast", b'\n');
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, ["hi", "ok\u{fffd}no", "last"]);
        let err = items[1].error.as_deref().unwrap();
        assert!(
            err.contains("stdin line 2") && err.contains("column 3"),
            "{err}"
        );
        assert_eq!(items[2].end_byte, 14);
    }

    #[test]
    fn a_byte_order_mark_is_dropped_from_the_first_line_only() {
        let items = read("\u{feff}first\n\u{feff}second\n".as_bytes(), b'\n');
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, ["first", "\u{feff}second"]);
    }

    #[test]
    fn nul_separated_records_keep_their_newlines() {
        let items = read(b"one\nline\0two\r\n\0", b'\0');
        let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, ["one\nline", "two\r\n"]);
        assert_eq!(items[1].number, 2);
    }
}
