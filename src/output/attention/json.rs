//! The JSON dump's entries; the README documents the fields.

use anyhow::Result;
use serde::Serialize;

use super::Model;
use crate::engine::Prediction;
use crate::output::Record;
use crate::tokenize::Encoded;

/// One entry.
#[derive(Serialize)]
struct Entry<'a> {
    model: &'a str,
    record: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    text: &'a str,
    tokens: &'a [String],
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
pub(super) fn entry(
    model: &Model,
    r: &Record,
    enc: &Encoded,
    p: &Prediction,
    attention: &[Vec<Vec<Vec<f32>>>],
) -> Result<Vec<u8>> {
    let kept = model.kept(attention);
    let entry = Entry {
        model: &model.name,
        record: r.item.number,
        id: r.item.id.as_deref(),
        text: &r.item.text,
        tokens: &enc.tokens,
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
