//! `--format tsv`: `line, label, score, [one score per label,] text`, tab-separated.

use std::io::{self, Write};

use super::{Format, FormatOptions, Record};

/// Tab-separated rows without a header, so row N is input N. Tabs, newlines and
/// backslashes inside the text are escaped (`\t`, `\n`, `\\`) to keep one row per input.
/// A failed input has `ERROR` as its label, an empty score and the message as its text.
pub struct Tsv {
    out: Box<dyn Write>,
    opts: FormatOptions,
}

impl Tsv {
    /// A writer over `out`.
    pub fn new(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        Self { out, opts }
    }
}

/// Escapes the characters that would break a row.
fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\t' => s.push_str("\\t"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s
}

impl Format for Tsv {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        match r.outcome {
            Ok((_, p)) => {
                write!(
                    self.out,
                    "{}\t{}\t{:.6}",
                    r.line, self.opts.labels[p.top], p.probs[p.top]
                )?;
                if self.opts.all_scores {
                    for prob in &p.probs {
                        write!(self.out, "\t{prob:.6}")?;
                    }
                }
                writeln!(self.out, "\t{}", escape(r.text))
            }
            Err(e) => {
                write!(self.out, "{}\tERROR\t", r.line)?;
                if self.opts.all_scores {
                    write!(self.out, "{}", "\t".repeat(self.opts.labels.len()))?;
                }
                writeln!(self.out, "\t{}", escape(e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_keeps_one_row_per_input() {
        assert_eq!(super::escape("a\tb\nc\\d"), "a\\tb\\nc\\\\d");
    }
}
