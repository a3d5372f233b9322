//! `--format csv` and `--format tsv`: a header row naming every column, then one row per
//! input record.
//!
//! From a CSV/TSV input the row comes back as it was read, with the prediction's columns
//! appended (`label`, `score`, ..., `error`; all prefixed `prediction_` if the input
//! already has a column of one of those names). Otherwise the columns are `record`,
//! [`id`,] `label`, `score`, ..., `text`, and a failed input has `ERROR` as its label and
//! the message in the text column. A ranking's columns are `rank`, `index`, [`id`,]
//! `score`, `text`, or `rank`, `index`, `score`, `error` after an input row's.

use std::borrow::Cow;
use std::io::{self, Write};

use super::{index, Format, FormatOptions, Record, Scored};
use crate::input::Carried;

/// A CSV or TSV writer.
pub struct Delimited {
    out: Box<dyn Write>,
    opts: FormatOptions,
    sep: u8,
    header_written: bool,
    /// Names of the result's columns: `label`, `score`, ... (or a ranking's `score`),
    /// between the record's place and its text, or after an input row's columns.
    added: Vec<String>,
}

impl Delimited {
    /// Comma-separated, RFC 4180 quoting.
    pub fn csv(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        Self::new(out, opts, b',')
    }

    /// Tab-separated; tabs, newlines, carriage returns and backslashes in text are written
    /// as `\t`, `\n`, `\r`, `\\`.
    pub fn tsv(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        Self::new(out, opts, b'\t')
    }

    fn new(out: Box<dyn Write>, opts: FormatOptions, sep: u8) -> Self {
        let mut added = vec!["score".to_string()];
        if !opts.ranking {
            added.insert(0, "label".to_string());
            for i in 2..=opts.top_k.unwrap_or(0).min(opts.labels.len()) {
                added.push(format!("label_{i}"));
                added.push(format!("score_{i}"));
            }
            if opts.all_scores {
                added.extend(opts.labels.iter().map(|l| format!("score_{l}")));
            }
            if opts.threshold.is_some() {
                added.push("labels".into());
            }
        }
        Self {
            out,
            opts,
            sep,
            header_written: false,
            added,
        }
    }

    /// One field, quoted (CSV) or escaped (TSV) as needed.
    fn field<'a>(&self, s: &'a str) -> Cow<'a, str> {
        field(s, self.sep)
    }

    /// A carried TSV field is written as read (it holds no tab or newline) unless it came
    /// from CSV with one inside (or holds other control characters), so a TSV file comes
    /// back byte for byte.
    fn carried_field<'a>(&self, s: &'a str) -> Cow<'a, str> {
        // A ranking has always escaped the row's fields like its own (a backslash comes
        // back doubled); kept so that no output byte changes.
        if self.sep == b'\t' && !self.opts.ranking && !s.contains(|c: char| c.is_control()) {
            Cow::Borrowed(s)
        } else {
            self.field(s)
        }
    }

    fn row(&mut self, fields: &[Cow<str>]) -> io::Result<()> {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.out.write_all(&[self.sep])?;
            }
            self.out.write_all(f.as_bytes())?;
        }
        self.out.write_all(b"\n")
    }

    /// The columns that say where a record stands: a ranking's `rank` and `index`, else
    /// `record` in a compact row (an input row is its own record).
    fn place_names(&self, carried: bool) -> &'static [&'static str] {
        match (self.opts.ranking, carried) {
            (true, _) => &["rank", "index"],
            (false, false) => &["record"],
            (false, true) => &[],
        }
    }

    /// The values of `place_names`.
    fn place(&self, r: &Record, carried: bool) -> Vec<String> {
        match (self.opts.ranking, carried) {
            (true, _) => {
                let rank = match r.outcome {
                    Ok(Scored::Ranked { rank, .. }) => rank.to_string(),
                    _ => String::new(),
                };
                vec![rank, index(r.item).to_string()]
            }
            (false, false) => vec![r.item.number.to_string()],
            (false, true) => Vec::new(),
        }
    }

    /// The header: an input row's columns and the ones the result adds to it (all
    /// prefixed with the output key when one of them clashes with the input's), or a
    /// compact row's.
    fn header(&mut self) -> io::Result<()> {
        let names: Vec<String> = match &self.opts.columns {
            Some(columns) => {
                let mut added: Vec<String> = self
                    .place_names(true)
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                added.extend(self.added.iter().cloned());
                added.push("error".into());
                // Prefixed until nothing clashes: an input with both `label` and
                // `prediction_label` gets `prediction_prediction_label`, never a
                // column name twice.
                let mut prefix = String::new();
                while added
                    .iter()
                    .any(|a| columns.contains(&format!("{prefix}{a}")))
                {
                    prefix = format!("{}_{prefix}", self.opts.output_key);
                }
                for a in &mut added {
                    *a = format!("{prefix}{a}");
                }
                columns.iter().cloned().chain(added).collect()
            }
            None => {
                let mut names: Vec<String> = self
                    .place_names(false)
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                if self.opts.ids {
                    names.push("id".into());
                }
                names.extend(self.added.iter().cloned());
                names.push("text".into());
                if self.opts.pairs {
                    names.push("text_pair".into());
                }
                names
            }
        };
        let fields: Vec<Cow<str>> = names.iter().map(|n| self.field(n)).collect();
        self.row(&fields)
    }

    fn header_once(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.header()?;
            self.header_written = true;
        }
        Ok(())
    }

    /// The result's columns, in `added` order.
    fn result(&self, r: &Record) -> Vec<String> {
        let p = match r.outcome {
            Ok(Scored::Answer(a)) => &a.prediction,
            Ok(Scored::Ranked { score, .. }) => return vec![format!("{score:.6}")],
            Err(_) => {
                let mut v = Vec::new();
                if !self.opts.ranking {
                    v.push("ERROR".to_string());
                }
                v.resize(self.added.len(), String::new());
                return v;
            }
        };
        let mut v = vec![
            self.opts.labels[p.top].clone(),
            format!("{:.6}", p.probs[p.top]),
        ];
        if let Some(top) = self.opts.top(p) {
            for (l, s) in top.into_iter().skip(1) {
                v.push(l.to_string());
                v.push(format!("{s:.6}"));
            }
        }
        if self.opts.all_scores {
            v.extend(p.probs.iter().map(|s| format!("{s:.6}")));
        }
        if let Some(above) = self.opts.above(p) {
            let names: Vec<&str> = above.into_iter().map(|(l, _)| l).collect();
            v.push(names.join(","));
        }
        v
    }
}

/// One field of a CSV (`sep` `,`) or TSV row, quoted or escaped as needed. Control
/// characters other than the ones each format handles are shown as escapes, as in the
/// human format, so no output carries raw NUL or terminal escape bytes.
pub(crate) fn field(s: &str, sep: u8) -> Cow<'_, str> {
    if sep == b',' {
        let s = escape_controls(s);
        if s.contains([',', '"', '\n', '\r']) {
            Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
        } else {
            s
        }
    } else if s.contains(|c: char| c == '\\' || c.is_control()) {
        Cow::Owned(tsv_escape(s))
    } else {
        Cow::Borrowed(s)
    }
}

/// Control characters other than newline and carriage return (which CSV quotes) and tab
/// as `\u{1b}` escapes.
fn escape_controls(text: &str) -> Cow<'_, str> {
    let special = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if special(c) {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    Cow::Owned(s)
}

/// Backslash escapes for the characters that would break a TSV row, and every other
/// control character as `\u{..}`.
fn tsv_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\t' => s.push_str("\\t"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => s.extend(c.escape_default()),
            c => s.push(c),
        }
    }
    s
}

impl Format for Delimited {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        self.header_once()?;
        let row = match (&self.opts.columns, &r.item.carried) {
            (Some(_), Carried::Row(row)) => Some(row),
            _ => None,
        };
        let place = self.place(r, row.is_some());
        let result = self.result(r);
        let error = r.outcome.err();
        let mut fields: Vec<Cow<str>> = Vec::new();
        if let Some(row) = row {
            fields.extend(row.iter().map(|f| self.carried_field(f)));
            fields.extend(place.iter().chain(&result).map(|f| self.field(f)));
            fields.push(self.field(error.unwrap_or("")));
        } else {
            fields.extend(place.iter().map(|f| self.field(f)));
            if self.opts.ids {
                fields.push(self.field(r.item.id.as_deref().unwrap_or("")));
            }
            fields.extend(result.iter().map(|f| self.field(f)));
            fields.push(self.field(error.unwrap_or(&r.item.text)));
            if self.opts.pairs {
                fields.push(self.field(r.item.pair.as_deref().unwrap_or("")));
            }
        }
        self.row(&fields)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// A ranking, written whole at the end, has its header even when it ranks nothing.
    fn finish(&mut self) -> io::Result<()> {
        if self.opts.ranking {
            self.header_once()?;
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsv_escape_keeps_one_row_per_input() {
        assert_eq!(super::tsv_escape("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
    }

    #[test]
    fn control_characters_never_reach_the_output_raw() {
        assert_eq!(
            super::escape_controls("a\u{0}b\u{1b}[31m\n"),
            "a\\u{0}b\\u{1b}[31m\n"
        );
        assert_eq!(super::escape_controls("plain"), "plain");
        assert_eq!(super::tsv_escape("a\u{0}\\\u{1b}"), "a\\u{0}\\\\\\u{1b}");
    }
}
