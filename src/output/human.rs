//! `--format human`: `[id]  LABEL  score  [more labels]  text`, labels padded to one width;
//! for a ranking, `rank  score  #index  [id]  text`.

use std::io::{self, Write};

use super::{index, Format, FormatOptions, Record, Scored};

/// Aligned columns for a terminal.
pub struct Human {
    out: Box<dyn Write>,
    opts: FormatOptions,
    width: usize,
}

impl Human {
    /// A writer over `out`.
    pub fn new(out: Box<dyn Write>, opts: FormatOptions) -> Self {
        let width = opts
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        Self { out, opts, width }
    }

    /// The record's text (and its pair's), ending the line.
    fn text(&mut self, r: &Record) -> io::Result<()> {
        match &r.item.pair {
            Some(pair) => writeln!(
                self.out,
                "{}  ||  {}",
                printable(&r.item.text),
                printable(pair)
            ),
            None => writeln!(self.out, "{}", printable(&r.item.text)),
        }
    }
}

/// Control characters (which could move the cursor or end the line) shown as escapes;
/// everything else, quotes and non-ASCII included, as it is.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Format for Human {
    fn write(&mut self, r: &Record) -> io::Result<()> {
        let w = self.width;
        match r.outcome {
            Ok(Scored::Answer(a)) => {
                let p = &a.prediction;
                if let Some(id) = &r.item.id {
                    write!(self.out, "{}  ", printable(id))?;
                }
                write!(
                    self.out,
                    "{:<w$}  {:.4}  ",
                    self.opts.labels[p.top], p.probs[p.top]
                )?;
                if let Some(top) = self.opts.top(p) {
                    for (label, score) in top.into_iter().skip(1) {
                        write!(self.out, "{label}={score:.4} ")?;
                    }
                    write!(self.out, " ")?;
                }
                if let Some(above) = self.opts.above(p) {
                    let names: Vec<&str> = above.into_iter().map(|(l, _)| l).collect();
                    write!(self.out, "[{}]  ", names.join(","))?;
                }
                if self.opts.all_scores {
                    for (label, prob) in self.opts.labels.iter().zip(&p.probs) {
                        write!(self.out, "{label}={prob:.4} ")?;
                    }
                    write!(self.out, " ")?;
                }
                self.text(r)
            }
            Ok(Scored::Ranked { rank, score }) => {
                // Seven wide: raw scores may be negative.
                write!(self.out, "{rank:>4}  {score:>7.4}  #{:<4} ", index(r.item))?;
                if let Some(id) = &r.item.id {
                    write!(self.out, "{}  ", printable(id))?;
                }
                self.text(r)
            }
            Err(e) if self.opts.ranking => writeln!(
                self.out,
                "ERROR  -       #{:<4} {}",
                index(r.item),
                printable(e)
            ),
            Err(e) => {
                writeln!(self.out, "{:<w$}  {:6}  {}", "ERROR", "-", printable(e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
