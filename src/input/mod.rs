//! Input records: plain lines (or NUL-separated records), JSON Lines objects, or CSV/TSV
//! rows, each turned into the text to classify plus what the outputs carry through (the
//! input object or row, an id). Each reader is a plain iterator over [`Item`]s; the
//! pipeline runs it on a thread of its own.
//!
//! A record that cannot be used (not UTF-8, not JSON, no such field, wrong number of
//! columns) still becomes an [`Item`], with `error` set, so it gets an output row in its
//! place and nothing else is lost. Only a failing read of the stream itself ends it.

mod delimited;
mod jsonl;
mod lines;

use std::io::Read;
use std::path::Path;

use anyhow::Result;

pub use jsonl::JsonObject;

/// How the input is split into records (`--input-format`; each value's first paragraph is
/// its `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One record per line (per NUL-terminated chunk with --null-data).
    Lines,
    /// One JSON object per line (a bare JSON string is taken as the text).
    Jsonl,
    /// Comma-separated values with RFC 4180 quoting; header row unless --no-header.
    Csv,
    /// Tab-separated values, no quoting; header row unless --no-header.
    Tsv,
}

impl InputFormat {
    /// The format a file's extension implies; plain lines for anything else.
    pub fn from_path(path: &Path) -> Self {
        // `reviews.csv.gz` is a CSV file, compressed.
        let path = match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("gz") => {
                Path::new(path.file_stem().unwrap_or_default())
            }
            _ => path,
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson") => Self::Jsonl,
            Some("csv") => Self::Csv,
            Some("tsv" | "tab") => Self::Tsv,
            _ => Self::Lines,
        }
    }
}

/// `reader`, decompressed when it starts with gzip's magic bytes (`reviews.txt.gz`, or
/// `zcat` forgotten in a pipe): read as it was, such a file was one UTF-8 error per line.
/// Also says whether it was.
pub fn gunzip_if_compressed(
    reader: Box<dyn Read + Send>,
) -> std::io::Result<(Box<dyn Read + Send>, bool)> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        (Box::new(flate2::read::MultiGzDecoder::new(reader)), true)
    } else {
        (Box::new(reader), false)
    })
}

/// Which part of each record is the text, and which is its id.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// How records are split.
    pub format: InputFormat,
    /// JSONL field or CSV/TSV column (name, or 1-based number) holding the text.
    pub field: Option<String>,
    /// JSONL field or CSV/TSV column copied into the outputs as `id`.
    pub id_field: Option<String>,
    /// JSONL field or CSV/TSV column holding each record's second text (a pair).
    pub pair_field: Option<String>,
    /// Each plain line is a pair: the two texts separated by its first tab.
    pub pair_tab: bool,
    /// Whether the first CSV/TSV row names the columns.
    pub header: bool,
    /// Lines end at NUL bytes instead of newlines.
    pub null_data: bool,
    /// The CSV/TSV field separator, when not the format's own (`--delimiter`).
    pub delimiter: Option<u8>,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            format: InputFormat::Lines,
            field: None,
            id_field: None,
            pair_field: None,
            pair_tab: false,
            header: true,
            null_data: false,
            delimiter: None,
        }
    }
}

/// What an input record carries besides its text, for outputs that give it back.
#[derive(Debug, Clone, Default)]
pub enum Carried {
    /// Nothing (a line, an argument, a JSON string).
    #[default]
    None,
    /// The JSONL input object, its values kept byte for byte.
    Json(JsonObject),
    /// The CSV/TSV row's fields, as many as the header has.
    Row(Vec<String>),
}

/// One input record.
#[derive(Debug, Clone, Default)]
pub struct Item {
    /// 1-based record number (argument, line, JSONL line or CSV row after the header).
    pub number: usize,
    /// The text to classify (lossily decoded when it was not valid UTF-8).
    pub text: String,
    /// The second text, for a sentence pair (or a reranked document's query).
    pub pair: Option<String>,
    /// The `--id-field` value, when one was asked for and found.
    pub id: Option<String>,
    /// The input object or row, for outputs that carry it through.
    pub carried: Carried,
    /// Why this record cannot be classified, naming the source, record and reason.
    pub error: Option<String>,
    /// Bytes of the source read up to the end of this record (for progress).
    pub end_byte: u64,
}

/// A new handle on this process's descriptor `fd` (0 for standard input), sharing its
/// offset: to ask what it is (a regular file, its size), or to write where it writes.
pub fn process_stream(fd: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `dup` takes any integer and fails on one that is not an open descriptor;
    // the new descriptor it returns is ours alone to own.
    let new = unsafe { libc::dup(fd) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(new) })
}

/// A stream of records and what is known about them before the first one.
pub struct Records {
    /// CSV/TSV column names (the header row, or `1, 2, ...` without one), for outputs
    /// that give the row back.
    pub columns: Option<Vec<String>>,
    /// The records, in order; an `Err` (the stream could not be read) ends them.
    pub items: Box<dyn Iterator<Item = Result<Item>> + Send>,
    /// Whether reading them can wait on someone else.
    pub arrival: Arrival,
    /// JSON Lines: outputs give every record its result under one key, as they give the
    /// objects they carry through.
    pub jsonl: bool,
}

/// How records become available, which decides how long the pipeline waits to gather
/// inputs it sorts and batches together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// All there already (arguments, a regular file): nothing to wait for but the reader,
    /// so batches never depend on timing, and neither do scores on the paths whose last
    /// digits move with a batch's padded length.
    Ready,
    /// From a pipe or socket, as fast as the writer goes.
    Stream,
    /// Typed at a terminal: each line is answered as soon as it is read.
    Typed,
}

impl Records {
    /// The same records, arriving as `arrival` says.
    pub fn arriving(self, arrival: Arrival) -> Self {
        Self { arrival, ..self }
    }
}

/// Opens `reader` (called `name` in messages) as records of `opts.format`, arriving as a
/// stream until the caller says otherwise. CSV/TSV read their header here, so a column
/// that does not exist fails before any model work.
pub fn open(reader: Box<dyn Read + Send>, name: &str, opts: &InputOptions) -> Result<Records> {
    if opts.pair_tab && opts.format != InputFormat::Lines {
        anyhow::bail!("--pair splits plain lines at a tab; for JSONL, CSV or TSV records name the second text with --pair-field (--pair-column)");
    }
    if opts.pair_field.is_some() && opts.format == InputFormat::Lines {
        anyhow::bail!("--pair-field names a JSONL field or CSV/TSV column; for plain lines use --pair (TEXT<TAB>TEXT_PAIR)");
    }
    // Flags that would otherwise be ignored, the whole line classified as the text.
    let read_as = match opts.format {
        InputFormat::Lines => "plain lines",
        InputFormat::Jsonl => "JSON Lines",
        InputFormat::Csv | InputFormat::Tsv => "CSV/TSV",
    };
    let hint = "name its format with --input-format (a file's is guessed from its name: .jsonl, .ndjson, .csv, .tsv, .tab)";
    if opts.format == InputFormat::Lines && (opts.field.is_some() || opts.id_field.is_some()) {
        let flag = if opts.field.is_some() {
            "--field"
        } else {
            "--id-field"
        };
        anyhow::bail!(
            "{flag} names a JSONL field or CSV/TSV column, but {name} is read as {read_as}; {hint}"
        );
    }
    if opts.delimiter.is_some() && !matches!(opts.format, InputFormat::Csv | InputFormat::Tsv) {
        anyhow::bail!("--delimiter is for CSV/TSV input, but {name} is read as {read_as}; {hint}");
    }
    if !opts.header && !matches!(opts.format, InputFormat::Csv | InputFormat::Tsv) {
        anyhow::bail!("--no-header is for CSV/TSV input, but {name} is read as {read_as}; {hint}");
    }
    match opts.format {
        InputFormat::Lines => {
            let lines = lines::Lines::new(reader, name, if opts.null_data { b'\0' } else { b'\n' });
            let items: Box<dyn Iterator<Item = Result<Item>> + Send> = if opts.pair_tab {
                let name = name.to_string();
                Box::new(lines.map(move |item| item.map(|i| split_pair(i, &name))))
            } else {
                Box::new(lines)
            };
            Ok(Records {
                columns: None,
                items,
                arrival: Arrival::Stream,
                jsonl: false,
            })
        }
        InputFormat::Jsonl => Ok(Records {
            columns: None,
            items: Box::new(jsonl::JsonLines::new(reader, name, opts)?),
            arrival: Arrival::Stream,
            jsonl: true,
        }),
        InputFormat::Csv | InputFormat::Tsv => delimited::open(reader, name, opts),
    }
}

/// Records from the command line's TEXT arguments, each paired with `pair` when given.
pub fn from_args(texts: Vec<String>, pair: Option<String>) -> Records {
    Records {
        columns: None,
        items: Box::new(texts.into_iter().enumerate().map(move |(i, text)| {
            Ok(Item {
                number: i + 1,
                text,
                pair: pair.clone(),
                ..Item::default()
            })
        })),
        arrival: Arrival::Ready,
        jsonl: false,
    }
}

/// A `--pair` line split at its first tab into the two texts; a line without one is an
/// error record (the others go on).
fn split_pair(mut item: Item, name: &str) -> Item {
    if item.error.is_some() {
        return item;
    }
    match item.text.split_once('\t') {
        Some((a, b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            item.text = a;
            item.pair = Some(b);
        }
        None => {
            item.error = Some(format!(
                "{} line {}: no tab, so no second text (--pair reads TEXT<TAB>TEXT_PAIR lines)",
                name, item.number
            ));
        }
    }
    item
}

/// Reads up to and including `sep` into `buf` (cleared first): `None` at the end of the
/// stream, else the byte count, or the read error naming `name` and the `what` (line or
/// record) numbered `number`.
fn read_chunk(
    reader: &mut impl std::io::BufRead,
    sep: u8,
    buf: &mut Vec<u8>,
    name: &str,
    what: &str,
    number: usize,
) -> Option<Result<usize>> {
    buf.clear();
    match reader.read_until(sep, buf) {
        Ok(0) => None,
        Ok(n) => Some(Ok(n)),
        Err(e) => Some(Err(
            anyhow::Error::new(e).context(format!("cannot read {name} at {what} {number}"))
        )),
    }
}

/// Where a record is, for messages: `reviews.csv record 4 (line 7)`.
fn place(name: &str, record: usize, line: usize) -> String {
    if record == line {
        format!("{name} line {line}")
    } else {
        format!("{name} record {record} (line {line})")
    }
}

/// Bytes as text; invalid UTF-8 is an error naming where the first bad byte is.
fn decode(raw: &[u8], place: impl FnOnce() -> String) -> Result<String, (String, String)> {
    match std::str::from_utf8(raw) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => Err((
            String::from_utf8_lossy(raw).into_owned(),
            format!(
                "{}: not valid UTF-8 (bad byte at column {}); skipped",
                place(),
                e.valid_up_to() + 1
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(
            InputFormat::from_path(Path::new("a/b.JSONL")),
            InputFormat::Jsonl
        );
        assert_eq!(InputFormat::from_path(Path::new("x.csv")), InputFormat::Csv);
        assert_eq!(InputFormat::from_path(Path::new("x.tsv")), InputFormat::Tsv);
        assert_eq!(
            InputFormat::from_path(Path::new("x.txt")),
            InputFormat::Lines
        );
        assert_eq!(InputFormat::from_path(Path::new("-")), InputFormat::Lines);
    }
}
