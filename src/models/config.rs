//! `config.json`: the architecture numbers and the label names of a checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::layers::Activation;

/// Maps a `hidden_act` string; unknown names are refused rather than guessed.
fn parse_act(name: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => bail!(
            "unsupported hidden_act {other:?}: bert-cli knows gelu, gelu_new, gelu_pytorch_tanh and relu"
        ),
    })
}

/// How the classifier's logits turn into probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// One label per input: softmax across labels.
    Softmax,
    /// Independent labels (multi-label or a single logit): a sigmoid each.
    Sigmoid,
}

/// The fields of a BERT `config.json` that the model needs.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    problem_type: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    initializer_range: Option<f64>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// A validated BERT configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Longest input the position table covers; inputs are truncated to it.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Label names by index, as `config.json` gives them (possibly generic `LABEL_n`).
    pub labels: Vec<String>,
    /// `problem_type`, when the config says it is multi-label.
    pub multi_label: bool,
    /// Standard deviation used to initialise an untrained head.
    pub initializer_range: f64,
}

impl Config {
    /// Reads and validates `config.json`, naming the file in every error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parses the JSON text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)?;
        if let Some(mt) = &raw.model_type {
            if mt != "bert" {
                bail!("model_type is {mt:?}; bert-cli runs BERT-family encoders (model_type \"bert\")");
            }
        }
        if let Some(pe) = &raw.position_embedding_type {
            if pe != "absolute" {
                bail!("position_embedding_type {pe:?} is not supported; only \"absolute\" is");
            }
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                raw.hidden_size,
                raw.num_attention_heads
            );
        }
        let labels = match &raw.id2label {
            Some(map) => {
                let mut labels = vec![String::new(); map.len()];
                for (k, v) in map {
                    let i: usize = k
                        .parse()
                        .with_context(|| format!("id2label key {k:?} is not an integer"))?;
                    if i >= labels.len() {
                        bail!("id2label has {} entries but names index {i}", map.len());
                    }
                    labels[i] = v.clone();
                }
                labels
            }
            None => (0..raw.num_labels.unwrap_or(2))
                .map(|i| format!("LABEL_{i}"))
                .collect(),
        };
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: parse_act(&raw.hidden_act)?,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            labels,
            multi_label: raw.problem_type.as_deref() == Some("multi_label_classification"),
            initializer_range: raw.initializer_range.unwrap_or(0.02),
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Softmax for single-label heads of 2+ labels, sigmoid otherwise.
    pub fn scoring(&self, num_labels: usize) -> Scoring {
        if self.multi_label || num_labels == 1 {
            Scoring::Sigmoid
        } else {
            Scoring::Softmax
        }
    }
}

/// True when every name is a placeholder such as `LABEL_0`, which says nothing to a reader.
pub fn labels_are_generic(labels: &[String]) -> bool {
    labels
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("LABEL_{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16"#;

    #[test]
    fn defaults_and_generic_labels() {
        let cfg = Config::from_json(&format!("{BASE}}}")).unwrap();
        assert_eq!(cfg.hidden_act, Activation::GeluErf);
        assert_eq!(cfg.labels, vec!["LABEL_0", "LABEL_1"]);
        assert!(labels_are_generic(&cfg.labels));
        assert_eq!(cfg.scoring(2), Scoring::Softmax);
        assert_eq!(cfg.scoring(1), Scoring::Sigmoid);
    }

    #[test]
    fn id2label_is_ordered_by_index_not_text() {
        let cfg = Config::from_json(&format!(
            r#"{BASE}, "id2label": {{"10": "k", "2": "c", "0": "a", "1": "b", "3": "d", "4": "e",
            "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}}, "problem_type": "multi_label_classification"}}"#
        ))
        .unwrap();
        assert_eq!(cfg.labels.join(""), "abcdefghijk");
        assert_eq!(cfg.scoring(11), Scoring::Sigmoid);
    }

    #[test]
    fn refuses_unknown_activation_and_bad_heads() {
        let err = Config::from_json(&format!(r#"{BASE}, "hidden_act": "swiglu"}}"#)).unwrap_err();
        assert!(format!("{err:#}").contains("swiglu"));
        let bad = BASE.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
        let err = Config::from_json(&format!("{bad}}}")).unwrap_err();
        assert!(format!("{err:#}").contains("divisible"));
    }
}
