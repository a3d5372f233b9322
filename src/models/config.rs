//! `config.json`: the architecture numbers and the label names of a checkpoint.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::layers::Activation;

/// Maps an activation name (`hidden_act`, `pooler_hidden_act`, DistilBERT's
/// `activation`); unknown names are refused rather than guessed.
pub fn parse_act(name: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        other => bail!(
            "unsupported activation {other:?}: bert-cli knows gelu, gelu_new, gelu_pytorch_tanh, relu and tanh"
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
    /// The raw logits (`--function-to-apply none`).
    None,
}

/// The fields of a `config.json` every family has, under BERT's names (a family that
/// writes them otherwise says so in its `Defaults::renames`).
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
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    problem_type: Option<String>,
    /// sentence-transformers' cross-encoder activation (older configs).
    #[serde(default)]
    sbert_ce_default_activation_function: Option<String>,
    /// sentence-transformers' settings (newer configs: `activation_fn`).
    #[serde(default)]
    sentence_transformers: Option<serde_json::Value>,
    #[serde(default)]
    initializer_range: Option<f64>,
    #[serde(default)]
    pad_token_id: Option<usize>,
    #[serde(default)]
    embedding_size: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}

/// What a family's `config.json` means where it is silent, and the names it writes
/// differently: each family declares one (`Family::config`).
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// Rows of the token-type table when `type_vocab_size` is absent.
    pub type_vocab_size: usize,
    /// `layer_norm_eps` when absent.
    pub layer_norm_eps: f64,
    /// The family's LayerNorms use `layer_norm_eps` above whatever the config says.
    pub eps_fixed: bool,
    /// `pad_token_id` when absent.
    pub pad_token_id: usize,
    /// Positions are counted from the padding id + 1 (RoBERTa), so the rows up to it are
    /// not usable.
    pub positions_past_padding: bool,
    /// Fields the family writes under its own names: (its name, BERT's name).
    pub renames: &'static [(&'static str, &'static str)],
}

impl Defaults {
    /// BERT's.
    pub const BERT: Self = Self {
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        eps_fixed: false,
        pad_token_id: 0,
        positions_past_padding: false,
        renames: &[],
    };
}

/// Which family a config names, as the registry found it.
pub struct Kind {
    /// `model_type` as written (or `bert` when absent).
    pub model_type: String,
    /// Whether `model_type` was absent and BERT assumed.
    pub assumed: bool,
    /// The family in words.
    pub name: &'static str,
}

/// A validated model configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The family in words, for `info` and messages.
    pub family_name: &'static str,
    /// `model_type` as written (or `bert` when absent), for messages.
    pub model_type: String,
    /// Whether `model_type` was absent and BERT assumed.
    pub model_type_assumed: bool,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Width of the embeddings (ELECTRA, DeBERTa); `hidden_size` unless it differs.
    pub embedding_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (0: the model has none).
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// The padding token's id (RoBERTa's positions count from it).
    pub pad_token_id: usize,
    /// Label names by index, as `config.json` gives them (possibly generic `LABEL_n`).
    pub labels: Vec<String>,
    /// `problem_type`, when the config says it is multi-label.
    pub multi_label: bool,
    /// The activation a sentence-transformers cross-encoder applies to its scores, when
    /// the config names one (`Sigmoid`, or `Identity` for raw scores).
    pub cross_encoder_scoring: Option<Scoring>,
    /// Standard deviation used to initialise an untrained head.
    pub initializer_range: f64,
    /// Rows of the position table up to the padding id are unusable (RoBERTa).
    positions_past_padding: bool,
    /// The whole `config.json`, for the fields only one family reads (`fields`).
    json: serde_json::Value,
}

impl Config {
    /// Validates the parsed `config.json` of the family `kind` names, read with the
    /// family's `defaults`. The family's own fields are checked by the family.
    pub fn parse(mut json: serde_json::Value, kind: Kind, defaults: &Defaults) -> Result<Self> {
        if let Some(map) = json.as_object_mut() {
            for (theirs, ours) in defaults.renames {
                if !map.contains_key(*ours) {
                    if let Some(v) = map.remove(*theirs) {
                        map.insert((*ours).to_string(), v);
                    }
                }
            }
        }
        let raw = RawConfig::deserialize(&json)?;
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
        if let Some(eps) = raw.layer_norm_eps {
            if !(eps > 0.0 && eps.is_finite()) {
                bail!("layer_norm_eps {eps} cannot be right: it must be a small positive number (BERT uses 1e-12)");
            }
        }
        for (name, value) in [
            ("num_hidden_layers", raw.num_hidden_layers),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("vocab_size", raw.vocab_size),
            ("max_position_embeddings", raw.max_position_embeddings),
        ] {
            if value == 0 {
                bail!("{name} 0 cannot be right");
            }
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
        let act = parse_act(&raw.hidden_act)?;
        Ok(Self {
            family_name: kind.name,
            model_type: kind.model_type,
            model_type_assumed: kind.assumed,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            embedding_size: raw.embedding_size.unwrap_or(raw.hidden_size),
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: act,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size.unwrap_or(defaults.type_vocab_size),
            layer_norm_eps: match raw.layer_norm_eps {
                Some(eps) if !defaults.eps_fixed => eps,
                _ => defaults.layer_norm_eps,
            },
            pad_token_id: raw.pad_token_id.unwrap_or(defaults.pad_token_id),
            labels,
            multi_label: raw.problem_type.as_deref() == Some("multi_label_classification"),
            cross_encoder_scoring: raw
                .sbert_ce_default_activation_function
                .clone()
                .or_else(|| {
                    raw.sentence_transformers
                        .as_ref()
                        .and_then(|v| v.get("activation_fn"))
                        .and_then(|v| v.as_str())
                        .map(String::from)
                })
                .and_then(|f| {
                    if f.ends_with("Sigmoid") {
                        Some(Scoring::Sigmoid)
                    } else if f.ends_with("Identity") {
                        Some(Scoring::None)
                    } else {
                        None
                    }
                }),
            initializer_range: raw.initializer_range.unwrap_or(0.02),
            positions_past_padding: defaults.positions_past_padding,
            json,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The longest input, in tokens, the model reads: its position table, less the rows
    /// RoBERTa's positions skip (those up to the padding id).
    pub fn max_tokens(&self) -> usize {
        if self.positions_past_padding {
            self.max_position_embeddings
                .saturating_sub(self.pad_token_id + 1)
        } else {
            self.max_position_embeddings
        }
    }

    /// The fields of `config.json` only one family reads, as that family declares them.
    pub fn fields<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(T::deserialize(&self.json)?)
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
