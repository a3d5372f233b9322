//! `config.json`: the architecture numbers and the label names of a checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::layers::Activation;

/// Maps an activation name (`hidden_act`, `pooler_hidden_act`, DistilBERT's
/// `activation`); unknown names are refused rather than guessed.
fn parse_act(name: &str) -> Result<Activation> {
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

/// The architecture families bert-cli runs, by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `bert` (also configs without a `model_type`, as old ones are).
    Bert,
    /// `distilbert`.
    DistilBert,
    /// `roberta`, `xlm-roberta`, `camembert`: BERT's layers, positions past the padding id.
    Roberta,
    /// `electra`: BERT's layers, embeddings projected when narrower than the encoder.
    Electra,
    /// `deberta-v2` (DeBERTa-v2 and v3): disentangled attention over relative positions.
    DebertaV2,
}

/// `model_type` values and the family each names.
const MODEL_TYPES: [(&str, Family); 7] = [
    ("bert", Family::Bert),
    ("distilbert", Family::DistilBert),
    ("roberta", Family::Roberta),
    ("xlm-roberta", Family::Roberta),
    ("camembert", Family::Roberta),
    ("electra", Family::Electra),
    ("deberta-v2", Family::DebertaV2),
];

impl Family {
    fn from_model_type(model_type: &str) -> Result<Self> {
        MODEL_TYPES
            .iter()
            .find(|(name, _)| *name == model_type)
            .map(|&(_, family)| family)
            .ok_or_else(|| {
                let names: Vec<&str> = MODEL_TYPES.iter().map(|(n, _)| *n).collect();
                anyhow::anyhow!(
                    "model_type {model_type:?} is not supported; bert-cli runs these families: {}",
                    names.join(", ")
                )
            })
    }
}

/// `pos_att_type`: a list, or one string with `|` between entries (older configs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

impl PosAttType {
    fn entries(&self) -> Vec<String> {
        match self {
            Self::List(v) => v.iter().map(|s| s.trim().to_lowercase()).collect(),
            Self::Joined(s) => s
                .split('|')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// The fields of a `config.json` that the models need, under the names each family
/// writes them (DistilBERT's `dim`, `n_layers`, ... as aliases).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    #[serde(alias = "dim")]
    hidden_size: usize,
    #[serde(alias = "n_layers")]
    num_hidden_layers: usize,
    #[serde(alias = "n_heads")]
    num_attention_heads: usize,
    #[serde(alias = "hidden_dim")]
    intermediate_size: usize,
    #[serde(default = "default_act", alias = "activation")]
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
    // DeBERTa-v2.
    #[serde(default)]
    relative_attention: bool,
    #[serde(default)]
    position_buckets: Option<i64>,
    #[serde(default)]
    max_relative_positions: Option<i64>,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default)]
    share_att_key: bool,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default)]
    position_biased_input: Option<bool>,
    #[serde(default)]
    pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pooler_hidden_act: Option<String>,
    #[serde(default)]
    conv_kernel_size: Option<usize>,
}

fn default_act() -> String {
    "gelu".into()
}

/// DeBERTa-v2's relative-position settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Relative {
    /// Log-spaced buckets beyond this many positions each way; 0 for none.
    pub position_buckets: usize,
    /// Largest relative distance told apart (`max_relative_positions`, or the position
    /// table's size when that is below 1).
    pub max_relative_positions: usize,
    /// Content-to-position scores (`c2p` in `pos_att_type`).
    pub c2p: bool,
    /// Position-to-content scores (`p2c`).
    pub p2c: bool,
    /// Positions projected by the content query/key layers (no `pos_*_proj` of their own).
    pub share_att_key: bool,
    /// `norm_rel_ebd` has `layer_norm`: the position table goes through `encoder.LayerNorm`.
    pub norm_rel_ebd: bool,
}

impl Relative {
    /// Rows of `encoder.rel_embeddings`: twice the attention span.
    pub fn span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions
        }
    }
}

/// A validated model configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which architecture.
    pub family: Family,
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
    /// DeBERTa: absolute positions added to the embeddings (`position_biased_input`).
    pub position_biased_input: bool,
    /// DeBERTa: relative attention, when on.
    pub relative: Option<Relative>,
    /// DeBERTa: the pooler's width and activation.
    pub pooler_hidden_size: usize,
    /// DeBERTa: `pooler_hidden_act`.
    pub pooler_act: Activation,
}

impl Config {
    /// Reads and validates `config.json`, naming the file in every error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }

    /// Parses the JSON text of a `config.json`. The family is read first, so an
    /// unsupported one is named before any field it lacks.
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(default)]
            model_type: Option<String>,
        }
        let kind: Kind = serde_json::from_str(text)?;
        let model_type_assumed = kind.model_type.is_none();
        let model_type = kind.model_type.unwrap_or_else(|| "bert".into());
        let family = Family::from_model_type(&model_type)?;
        let raw: RawConfig = serde_json::from_str(text)?;
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
        if raw.conv_kernel_size.unwrap_or(0) > 0 {
            bail!(
                "conv_kernel_size {} (DeBERTa's convolution layer) is not supported",
                raw.conv_kernel_size.unwrap_or(0)
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
        // Defaults as each family's configuration class has them.
        let (default_types, default_eps, default_pad) = match family {
            Family::DistilBert => (0, 1e-12, 0),
            Family::Roberta => (1, 1e-5, 1),
            Family::DebertaV2 => (0, 1e-7, 0),
            Family::Bert | Family::Electra => (2, 1e-12, 0),
        };
        let relative = (family == Family::DebertaV2 && raw.relative_attention)
            .then(|| -> Result<Relative> {
                let types = raw
                    .pos_att_type
                    .as_ref()
                    .map(PosAttType::entries)
                    .unwrap_or_default();
                if let Some(t) = types.iter().find(|t| *t != "c2p" && *t != "p2c") {
                    bail!("pos_att_type {t:?} is not supported; bert-cli knows c2p and p2c");
                }
                let max_rel = raw.max_relative_positions.unwrap_or(-1);
                let max_relative_positions = if max_rel < 1 {
                    raw.max_position_embeddings
                } else {
                    max_rel as usize
                };
                let norm = raw.norm_rel_ebd.as_deref().unwrap_or("none").to_lowercase();
                Ok(Relative {
                    position_buckets: raw.position_buckets.unwrap_or(-1).max(0) as usize,
                    max_relative_positions,
                    c2p: types.iter().any(|t| t == "c2p"),
                    p2c: types.iter().any(|t| t == "p2c"),
                    share_att_key: raw.share_att_key,
                    norm_rel_ebd: norm.split('|').any(|s| s.trim() == "layer_norm"),
                })
            })
            .transpose()?;
        let act = parse_act(&raw.hidden_act)?;
        Ok(Self {
            family,
            model_type,
            model_type_assumed,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            embedding_size: raw.embedding_size.unwrap_or(raw.hidden_size),
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act: act,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size.unwrap_or(default_types),
            layer_norm_eps: match family {
                // DistilBERT's LayerNorms are fixed at 1e-12, whatever the config says.
                Family::DistilBert => 1e-12,
                _ => raw.layer_norm_eps.unwrap_or(default_eps),
            },
            pad_token_id: raw.pad_token_id.unwrap_or(default_pad),
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
            position_biased_input: raw.position_biased_input.unwrap_or(true),
            relative,
            pooler_hidden_size: raw.pooler_hidden_size.unwrap_or(raw.hidden_size),
            pooler_act: match &raw.pooler_hidden_act {
                Some(name) => parse_act(name)?,
                None => Activation::GeluErf,
            },
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The longest input, in tokens, the model reads: its position table, less the rows
    /// RoBERTa's positions skip (those up to the padding id).
    pub fn max_tokens(&self) -> usize {
        match self.family {
            Family::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id + 1),
            _ => self.max_position_embeddings,
        }
    }

    /// The family in words, for `info`.
    pub fn family_name(&self) -> &'static str {
        match (self.family, self.model_type.as_str()) {
            (Family::Bert, _) => "BERT",
            (Family::DistilBert, _) => "DistilBERT",
            (Family::Roberta, "xlm-roberta") => "XLM-RoBERTa",
            (Family::Roberta, "camembert") => "CamemBERT",
            (Family::Roberta, _) => "RoBERTa",
            (Family::Electra, _) => "ELECTRA",
            (Family::DebertaV2, _) => "DeBERTa-v2",
        }
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
    fn families_by_model_type_and_their_defaults() {
        let distil = r#"{"model_type": "distilbert", "vocab_size": 10, "dim": 8, "n_layers": 1,
            "n_heads": 2, "hidden_dim": 16, "max_position_embeddings": 16, "activation": "relu"}"#;
        let cfg = Config::from_json(distil).unwrap();
        assert_eq!(cfg.family, Family::DistilBert);
        assert_eq!((cfg.hidden_size, cfg.intermediate_size), (8, 16));
        assert_eq!(cfg.hidden_act, Activation::Relu);
        let roberta = format!(r#"{BASE}, "model_type": "xlm-roberta", "pad_token_id": 1}}"#);
        let cfg = Config::from_json(&roberta).unwrap();
        assert_eq!((cfg.family, cfg.max_tokens()), (Family::Roberta, 14));
        assert_eq!(cfg.family_name(), "XLM-RoBERTa");
        let deberta = format!(
            r#"{BASE}, "model_type": "deberta-v2", "relative_attention": true,
            "pos_att_type": "p2c|c2p", "position_buckets": 4, "max_relative_positions": -1}}"#
        );
        let rel = Config::from_json(&deberta).unwrap().relative.unwrap();
        assert!(rel.c2p && rel.p2c && !rel.share_att_key);
        assert_eq!((rel.span(), rel.max_relative_positions), (4, 16));
    }

    #[test]
    fn unsupported_family_is_named_before_missing_fields() {
        let err = Config::from_json(r#"{"model_type": "gpt2", "n_embd": 8}"#).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"gpt2\"") && msg.contains("distilbert, roberta"),
            "{msg}"
        );
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
