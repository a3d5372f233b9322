//! `--dump-attention FILE`: per input, the tokens and every head's attention, as JSON
//! (`json.rs`) or as one self-contained HTML page that draws it (`html.rs`).
//!
//! The file is written under a temporary name in the same folder and renamed into place
//! only when complete, so a failed or interrupted run leaves no half-written dump and an
//! existing file at the path untouched.

mod html;
mod json;
pub mod view;

pub use html::{page_entry, rollout, PageEntry};

use crate::engine::AttentionKeep;
use crate::engine::Prediction;
use crate::task::Part;
use crate::tokenize::Encoded;

/// One model input as the dump shows it.
pub(super) struct Input<'a> {
    record: usize,
    id: Option<&'a str>,
    /// The first text (the record's, or a reranked document's query).
    text: &'a str,
    text_pair: Option<&'a str>,
    /// Which of how many model inputs of the record this is, when more than one.
    part: Option<(usize, usize)>,
    enc: &'a Encoded,
    prediction: &'a Prediction,
    attention: &'a [Vec<Vec<Vec<f32>>>],
}

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::atomic::AtomicFile;
use super::{Record, Scored};

/// Dumps estimated past this many bytes get one warning, before they are written.
const WARN_BYTES: u64 = 100_000_000;

/// JSON or HTML (`--attention-format`; each value's first paragraph is its `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    /// A JSON array, one object per input.
    ///
    /// The schema is in the README.
    Json,
    /// One self-contained HTML page: head view, model view, rollout.
    Html,
}

impl DumpFormat {
    /// HTML for `.html`/`.htm` paths, JSON otherwise.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm") => {
                Self::Html
            }
            _ => Self::Json,
        }
    }
}

/// What goes into the dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The file's format.
    pub format: DumpFormat,
    /// Layers to keep (all when `None`).
    pub layers: Option<Vec<usize>>,
    /// Heads to keep in each kept layer (all when `None`).
    pub heads: Option<Vec<usize>>,
    /// Warn on stderr when the dump grows large.
    pub warn: bool,
}

/// The model facts every entry repeats.
#[derive(Debug, Clone, Default)]
struct Model {
    name: String,
    labels: Vec<String>,
    layers: Vec<usize>,
    heads: Vec<usize>,
    /// Whether layers or heads were filtered (then the JSON says which were kept).
    filtered: bool,
}

impl Model {
    /// The kept layers' kept heads (`[layer][head][query][key]`): `attention` holds
    /// those alone, in that order, as the engine copied them out (`AttentionKeep`).
    fn kept<'a>(&self, attention: &'a [Vec<Vec<Vec<f32>>>]) -> Vec<Vec<&'a Vec<Vec<f32>>>> {
        attention
            .iter()
            .map(|layer| layer.iter().collect())
            .collect()
    }
}

/// The model's name as a page shows it: a local folder by its own name only, since a
/// page is made to be shared and the full path says where the user keeps their files.
fn shareable_name(model: &str) -> String {
    let path = Path::new(model);
    if path.is_absolute() || path.is_dir() {
        if let Some(name) = path.file_name() {
            return name.to_string_lossy().into_owned();
        }
    }
    model.to_string()
}

/// A dump being written.
pub struct AttentionDump {
    file: Option<AtomicFile>,
    opts: DumpOptions,
    model: Model,
    written: usize,
    warned: bool,
}

impl AttentionDump {
    /// Creates the temporary file now, before any slow work, so a bad path fails at once.
    pub fn create(path: &Path, opts: DumpOptions) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        Ok(Self {
            file: Some(file),
            opts,
            model: Model::default(),
            written: 0,
            warned: false,
        })
    }

    /// The layers and heads to copy out of each forward pass: those written.
    pub fn keep(&self) -> AttentionKeep {
        AttentionKeep {
            layers: self.opts.layers.clone(),
            heads: self.opts.heads.clone(),
            rollout: self.opts.format == DumpFormat::Html,
        }
    }

    /// Names the model, its labels and its shape; checks `--attention-layers/-heads`
    /// against it and writes the file's opening.
    pub fn describe(
        &mut self,
        model: &str,
        labels: &[String],
        num_layers: usize,
        num_heads: usize,
    ) -> Result<()> {
        let keep = |given: &Option<Vec<usize>>, n: usize, what: &str| -> Result<Vec<usize>> {
            match given {
                None => Ok((0..n).collect()),
                Some(v) => {
                    if let Some(bad) = v.iter().find(|&&i| i >= n) {
                        bail!("--attention-{what}s {bad}: the model has {n} {what}s, numbered 0 to {}", n - 1);
                    }
                    Ok(v.clone())
                }
            }
        };
        self.model = Model {
            name: model.to_string(),
            labels: labels.to_vec(),
            layers: keep(&self.opts.layers, num_layers, "layer")?,
            heads: keep(&self.opts.heads, num_heads, "head")?,
            filtered: self.opts.layers.is_some() || self.opts.heads.is_some(),
        };
        let opening = match self.opts.format {
            DumpFormat::Json => b"[".to_vec(),
            DumpFormat::Html => html::opening(&shareable_name(&self.model.name)).into_bytes(),
        };
        self.file_mut()?.write(&opening)
    }

    fn file_mut(&mut self) -> Result<&mut AtomicFile> {
        self.file
            .as_mut()
            .context("internal error: attention dump already finished")
    }

    /// Appends one entry per model input of a record (one, or a window per chunk, or a
    /// pair per candidate label); failed records have no attention and are skipped.
    pub fn write(&mut self, r: &Record) -> Result<()> {
        let Ok(Scored::Answer(answer)) = r.outcome else {
            return Ok(());
        };
        for (i, part) in answer.parts.iter().enumerate() {
            let which = (answer.parts.len() > 1).then_some((i, answer.parts.len()));
            self.write_part(r, part, which)?;
        }
        Ok(())
    }

    fn write_part(&mut self, r: &Record, part: &Part, which: Option<(usize, usize)>) -> Result<()> {
        let Some(attention) = part.prediction.attention.as_deref() else {
            return Ok(());
        };
        let e = Input {
            record: r.item.number,
            id: r.item.id.as_deref(),
            text: part.text.as_deref().unwrap_or(&r.item.text),
            text_pair: part.text_pair.as_deref(),
            part: which,
            enc: &part.input,
            prediction: &part.prediction,
            attention,
        };
        let n = e.enc.ids.len() as u64;
        let cells = (self.model.layers.len() * self.model.heads.len()) as u64 * n * n;
        let (bytes, estimate) = match self.opts.format {
            DumpFormat::Json => {
                let e = json::entry(&self.model, &e)?;
                (e, cells * 11)
            }
            DumpFormat::Html => {
                let e = html::entry(&self.model, &e)?;
                (e, cells * 4 / 3)
            }
        };
        let sep: &[u8] = match (self.opts.format, self.written) {
            (DumpFormat::Json, 0) => b"\n",
            (DumpFormat::Json, _) => b",\n",
            (DumpFormat::Html, _) => b"",
        };
        let so_far = self.file_mut()?.written();
        if self.opts.warn && !self.warned && so_far + estimate > WARN_BYTES {
            self.warned = true;
            let path = self.file_mut()?.path().display().to_string();
            eprintln!(
                "bert-cli: warning: the attention dump {path} will pass {} MB; --attention-layers and --attention-heads keep less{}",
                WARN_BYTES / 1_000_000,
                if self.opts.format == DumpFormat::Json {
                    ", and an .html dump is about 8x smaller"
                } else {
                    ""
                }
            );
        }
        let file = self.file_mut()?;
        file.write(sep)?;
        file.write(&bytes)?;
        self.written += 1;
        Ok(())
    }

    /// Closes the array (or page), then moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        let closing = match self.opts.format {
            DumpFormat::Json => b"\n]\n".to_vec(),
            DumpFormat::Html => html::closing().into_bytes(),
        };
        let mut file = self
            .file
            .take()
            .context("internal error: attention dump already finished")?;
        file.write(&closing)?;
        file.commit()
    }
}
