//! The JSON dump's entries; the README documents the fields.

use anyhow::Result;
use serde::Serialize;

use super::{Input, Model};

/// One entry.
#[derive(Serialize)]
struct Entry<'a> {
    model: &'a str,
    record: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_pair: Option<&'a str>,
    /// Index of the second text's first token (bertviz's `sentence_b_start`).
    #[serde(skip_serializing_if = "Option::is_none")]
    sentence_b_start: Option<usize>,
    /// Which model input of the record (0-based), and of how many, when more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<usize>,
    tokens: &'a [String],
    /// The text went on past the tokens the model read (cut at its length).
    truncated: bool,
    token_ids: &'a [u32],
    offsets: &'a [(usize, usize)],
    num_layers: usize,
    num_heads: usize,
    /// Which layers and heads were kept, when `--attention-layers/-heads` chose some.
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<&'a [usize]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heads: Option<&'a [usize]>,
    attention: Vec<Vec<&'a Vec<Vec<f32>>>>,
    prediction: PredictionEntry<'a>,
}

#[derive(Serialize)]
struct PredictionEntry<'a> {
    label: &'a str,
    score: f32,
    labels: &'a [String],
    probs: &'a [f32],
    logits: &'a [f32],
}

/// The entry for one classified input, as JSON bytes.
pub(super) fn entry(model: &Model, e: &Input) -> Result<Vec<u8>> {
    let (enc, p) = (e.enc, e.prediction);
    let kept = model.kept(e.attention);
    let entry = Entry {
        model: &model.name,
        record: e.record,
        id: e.id,
        text: e.text,
        text_pair: e.text_pair,
        sentence_b_start: enc.pair_start,
        part: e.part.map(|p| p.0),
        parts: e.part.map(|p| p.1),
        tokens: &enc.tokens,
        truncated: enc.truncated,
        token_ids: &enc.ids,
        offsets: &enc.offsets,
        num_layers: kept.len(),
        num_heads: model.heads.len(),
        layers: model.filtered.then_some(model.layers.as_slice()),
        heads: model.filtered.then_some(model.heads.as_slice()),
        attention: kept,
        prediction: PredictionEntry {
            label: &model.labels[p.top],
            score: p.probs[p.top],
            labels: &model.labels,
            probs: &p.probs,
            logits: &p.logits,
        },
    };
    Ok(serde_json::to_vec(&entry)?)
}
