//! The self-contained HTML page: style, data and the viewer script all inline (no request
//! to any network or file; a Content-Security-Policy forbids them too), written as inputs
//! arrive: the opening, one `<script>` per input, then the viewer.

use crate::engine::{head_means, rollout_of_means};
use anyhow::Result;
use base64::Engine as _;
use serde_json::json;

use super::{Input, Model};

const VIEW_JS: &str = include_str!("view.js");
const VIEW_CSS: &str = include_str!("view.css");

/// Attention bytes are `round(p * SCALE)`: 1/255 steps, a quarter of the size of 4 digits.
const SCALE: f32 = 255.0;

/// Everything before the first input.
pub fn opening(model: &str) -> String {
    let title = escape_html(model);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>bert-cli attention: {title}</title>\n<style>\n{VIEW_CSS}</style></head><body>\n\
         <h1>Attention in {title}</h1>\n\
         <p class=\"note\">Written by bert-cli. Attention probabilities are stored to 1/255; the rollout and \
         the label probabilities to 6 digits.</p>\n\
         <div id=\"controls\"></div>\n<h2>Prediction</h2><div id=\"prediction\"></div>\n\
         <h2>Head view</h2><p class=\"note\">Each line joins a token (left) to a token it attends to (right), \
         drawn when the weight is at least 0.05, darker for more; one colour per head (one at first: \
         pick more, all or none above). Hover over a token on the left to see only its lines.</p><div id=\"headview\"></div>\n\
         <h2>Heat map</h2><p class=\"note\">The chosen layer and head as a grid: row = the token attending \
         (query), column = the token attended to (key), darker for more. Hover over a cell for its value.</p>\
         <div id=\"heatmap\"></div>\n\
         <h2>Model view</h2><p class=\"note\">Every layer and head; a click opens it in the head view.</p>\
         <div id=\"modelview\"></div>\n\
         <h2>Attention rollout</h2><p class=\"note\">Head-averaged attention with the residual connection \
         (0.5 A + 0.5 I), multiplied through the layers up to the chosen one (Abnar and Zuidema, 2020).</p>\
         <div id=\"rollout\"></div>\n\
         <script>window.BERT_CLI_DATA = [];</script>\n"
    )
}

/// The viewer script and the end of the page.
pub fn closing() -> String {
    format!("<script>\n{VIEW_JS}</script>\n</body></html>\n")
}

/// `(0.5 A_l + 0.5 I) ... (0.5 A_1 + 0.5 I)` with `A` the head-averaged attention: row
/// `[l][0]` says how much of the first token's state after layer `l` flows from each token.
/// Returns the first row after every layer, `[layer][token]`.
pub fn rollout(attention: &[Vec<Vec<Vec<f32>>>]) -> Vec<Vec<f32>> {
    let means: Vec<_> = attention.iter().map(|l| head_means(l)).collect();
    rollout_of_means(&means)
}

/// Rounds to 6 decimals for the page (JSON numbers stay short).
fn round6(x: f32) -> f64 {
    (f64::from(x) * 1e6).round() / 1e6
}

/// One input as the page shows it.
pub struct PageEntry<'a> {
    /// Input number.
    pub record: usize,
    /// `--id-field` value.
    pub id: Option<&'a str>,
    /// The input text.
    pub text: &'a str,
    /// The second text of a pair.
    pub text_pair: Option<&'a str>,
    /// Index of the second text's first token.
    pub sentence_b_start: Option<usize>,
    /// Which model input of the record, and of how many, when more than one.
    pub part: Option<(usize, usize)>,
    /// Its tokens.
    pub tokens: &'a [String],
    /// The text went on past these tokens (the model stopped reading there).
    pub truncated: bool,
    /// Predicted label.
    pub label: &'a str,
    /// Every label, by index.
    pub labels: &'a [String],
    /// Every label's score.
    pub probs: &'a [f32],
    /// Model layer and head numbers of `attention`'s rows.
    pub layers: &'a [usize],
    /// Heads kept in each layer.
    pub heads: &'a [usize],
    /// `[kept layer][kept head][query][key]`.
    pub attention: Vec<Vec<&'a Vec<Vec<f32>>>>,
    /// Rollout after each kept layer, when every layer was there to compute it.
    pub rollout: Option<Vec<Vec<f32>>>,
}

/// The page entry for a classified input (attention of every layer and head at hand).
pub(super) fn entry(model: &Model, e: &Input) -> Result<Vec<u8>> {
    let (enc, p, attention) = (e.enc, e.prediction, e.attention);
    let rollout = p
        .attention_rollout
        .as_ref()
        .map(|all| model.layers.iter().map(|&l| all[l].clone()).collect());
    page_entry(&PageEntry {
        record: e.record,
        id: e.id,
        text: e.text,
        text_pair: e.text_pair,
        sentence_b_start: enc.pair_start,
        part: e.part,
        tokens: &enc.tokens,
        truncated: enc.truncated,
        label: &model.labels[p.top],
        labels: &model.labels,
        probs: &p.probs,
        layers: &model.layers,
        heads: &model.heads,
        attention: model.kept(attention),
        rollout,
    })
}

/// One input as a `<script>` that adds it to the page's data.
pub fn page_entry(e: &PageEntry) -> Result<Vec<u8>> {
    let n = e.tokens.len();
    let mut bytes = Vec::with_capacity(e.layers.len() * e.heads.len() * n * n);
    for layer in &e.attention {
        for head in layer {
            if head.len() != n || head.iter().any(|row| row.len() != n) {
                anyhow::bail!(
                    "record {}: attention is not {n} x {n} for its {n} tokens",
                    e.record
                );
            }
            for row in head.iter() {
                bytes.extend(
                    row.iter()
                        .map(|&v| (v.clamp(0.0, 1.0) * SCALE).round() as u8),
                );
            }
        }
    }
    let rollout: Option<Vec<Vec<f64>>> = e.rollout.as_ref().map(|r| {
        r.iter()
            .map(|row| row.iter().map(|&x| round6(x)).collect())
            .collect()
    });
    let data = json!({
        "record": e.record,
        "id": e.id,
        "text": e.text,
        "text_pair": e.text_pair,
        "sentence_b_start": e.sentence_b_start,
        "part": e.part.map(|p| p.0),
        "parts": e.part.map(|p| p.1),
        "tokens": e.tokens,
        "truncated": e.truncated,
        "label": e.label,
        "labels": e.labels,
        "probs": e.probs.iter().map(|&x| round6(x)).collect::<Vec<_>>(),
        "layers": e.layers,
        "heads": e.heads,
        "scale": SCALE,
        "attention": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "rollout": rollout,
    });
    Ok(format!(
        "<script>BERT_CLI_DATA.push({});</script>\n",
        script_safe(&data.to_string())
    )
    .into_bytes())
}

/// JSON that cannot end its `<script>` element early: every `<` written as `\u003c`
/// (inside JSON it can only occur in strings, where the escape means the same).
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Text for an HTML element or attribute.
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_of_identity_attention_stays_on_each_token() {
        let eye = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let r = rollout(&[vec![eye.clone(), eye]]);
        assert_eq!(r, vec![vec![1.0, 0.0]]);
        // Uniform attention moves half of the state each layer.
        let half = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        let r = rollout(&[vec![half.clone()], vec![half]]);
        assert_eq!(r[0], vec![0.75, 0.25]);
        assert_eq!(r[1], vec![0.625, 0.375]);
    }

    #[test]
    fn script_text_cannot_close_its_element() {
        assert_eq!(
            script_safe(r#"{"t":"</script>"}"#),
            r#"{"t":"\u003c/script>"}"#
        );
    }
}
