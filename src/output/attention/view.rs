//! `bert-cli view DUMP.json -o PAGE.html`: a JSON attention dump turned into the page,
//! one entry at a time (a dump may be hundreds of megabytes).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::html::{self, PageEntry};
use crate::output::atomic::{self, AtomicFile};

/// The fields of a JSON dump entry the page needs.
#[derive(Deserialize)]
struct DumpEntry {
    model: String,
    #[serde(alias = "line")]
    record: usize,
    #[serde(default)]
    id: Option<String>,
    text: String,
    #[serde(default)]
    text_pair: Option<String>,
    #[serde(default)]
    sentence_b_start: Option<usize>,
    #[serde(default)]
    part: Option<usize>,
    #[serde(default)]
    parts: Option<usize>,
    tokens: Vec<String>,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    num_layers: Option<usize>,
    #[serde(default)]
    num_heads: Option<usize>,
    #[serde(default)]
    layers: Option<Vec<usize>>,
    #[serde(default)]
    heads: Option<Vec<usize>>,
    attention: Vec<Vec<Vec<Vec<f32>>>>,
    prediction: DumpPrediction,
}

#[derive(Deserialize)]
struct DumpPrediction {
    label: String,
    labels: Vec<String>,
    probs: Vec<f32>,
}

/// Writes the page for the dump at `input` to `output`; returns how many inputs it shows.
pub fn json_to_html(input: &Path, output: &Path) -> Result<usize> {
    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    atomic::not_the_input(output, Some(input))?;
    let mut out = AtomicFile::create(output)?;
    let mut count = 0;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file));
    let mut each = |e: DumpEntry| -> Result<()> {
        if count == 0 {
            out.write(html::opening(&e.model).as_bytes())?;
        }
        count += 1;
        let layers = e
            .layers
            .clone()
            .unwrap_or_else(|| (0..e.attention.len()).collect());
        let heads = e
            .heads
            .clone()
            .unwrap_or_else(|| (0..e.attention.first().map_or(0, Vec::len)).collect());
        check(&e, &layers, &heads)?;
        // Rollout multiplies through every layer, so a dump that kept only some has none.
        let rollout = e.layers.is_none() && e.heads.is_none();
        let page = PageEntry {
            record: e.record,
            id: e.id.as_deref(),
            text: &e.text,
            text_pair: e.text_pair.as_deref(),
            sentence_b_start: e.sentence_b_start,
            part: e.part.zip(e.parts),
            tokens: &e.tokens,
            truncated: e.truncated,
            label: &e.prediction.label,
            labels: &e.prediction.labels,
            probs: &e.prediction.probs,
            layers: &layers,
            heads: &heads,
            attention: e.attention.iter().map(|l| l.iter().collect()).collect(),
            rollout: rollout.then(|| html::rollout(&e.attention)),
        };
        out.write(&html::page_entry(&page)?)
    };
    de.deserialize_seq(Entries(&mut each))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is not a bert-cli JSON attention dump", input.display()))?;
    if count == 0 {
        out.write(html::opening("an empty dump").as_bytes())?;
    }
    out.write(html::closing().as_bytes())?;
    out.commit()?;
    Ok(count)
}

/// That `e`'s attention is one `n x n` matrix of probabilities per listed layer and head
/// for its `n` tokens, and its prediction one probability per label: the page and its
/// rollout index by these, and a hand-edited or damaged dump must not reach them.
fn check(e: &DumpEntry, layers: &[usize], heads: &[usize]) -> Result<()> {
    let (n, at) = (e.tokens.len(), format!("record {}", e.record));
    let num_layers = e.num_layers.unwrap_or(layers.len());
    if e.attention.len() != layers.len() || e.attention.len() != num_layers {
        anyhow::bail!(
            "{at}: attention has {} layers but the entry says {num_layers} (num_layers) and lists {} (layers)",
            e.attention.len(),
            layers.len()
        );
    }
    let num_heads = e.num_heads.unwrap_or(heads.len());
    for (layer, matrices) in layers.iter().zip(&e.attention) {
        if matrices.len() != heads.len() || matrices.len() != num_heads {
            anyhow::bail!(
                "{at}: layer {layer} has {} heads but the entry says {num_heads} (num_heads) and lists {} (heads)",
                matrices.len(),
                heads.len()
            );
        }
        for (head, m) in heads.iter().zip(matrices) {
            if m.len() != n || m.iter().any(|row| row.len() != n) {
                anyhow::bail!("{at}: layer {layer} head {head}: attention is not {n} x {n} for its {n} tokens");
            }
            // Rounding leaves a probability a hair past 1 at most.
            if let Some(v) = m
                .iter()
                .flatten()
                .find(|v| !(-1e-6..=1.0 + 1e-4).contains(*v))
            {
                anyhow::bail!("{at}: layer {layer} head {head}: attention holds {v}, which is not a probability");
            }
        }
    }
    if e.prediction.labels.len() != e.prediction.probs.len() {
        anyhow::bail!(
            "{at}: {} labels but {} scores",
            e.prediction.labels.len(),
            e.prediction.probs.len()
        );
    }
    Ok(())
}

/// Visits the dump's array, handing each entry to the callback as soon as it is read.
struct Entries<'f>(&'f mut dyn FnMut(DumpEntry) -> Result<()>);

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of attention entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<DumpEntry>()? {
            (self.0)(entry).map_err(|e| serde::de::Error::custom(format!("{e:#}")))?;
        }
        Ok(())
    }
}
