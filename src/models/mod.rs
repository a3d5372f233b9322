//! Model architectures, one file per family, each a tree of small structs with
//! `load(loader, cfg)` and `forward`, written against the layer toolkit
//! (`crate::layers`) alone. Each family file declares a `FAMILY`; `FAMILIES` below is
//! the one list of them (docs/ARCHITECTURE.md: "Adding a family").

pub mod bart;
pub mod bert;
pub mod classifier;
pub mod config;
pub mod deberta_v2;
pub mod distilbert;
pub mod electra;
pub mod encoder;
pub mod family;
pub mod head;
pub mod modernbert;
pub mod roberta;

use std::path::Path;

use anyhow::{Context, Result};

pub use classifier::{
    Batch, Classifier, HeadPolicy, Output, DEFAULT_MODEL, DEFAULT_RERANK_MODEL,
    DEFAULT_ZERO_SHOT_MODEL,
};
use config::{Config, Kind};
pub use family::Family;

use crate::layers::Loader;

/// Every family bert-cli runs, in the order messages list them.
pub const FAMILIES: [&Family; 7] = [
    &bert::FAMILY,
    &distilbert::FAMILY,
    &roberta::FAMILY,
    &electra::FAMILY,
    &deberta_v2::FAMILY,
    &modernbert::FAMILY,
    &bart::FAMILY,
];

/// The family that runs `model_type`, and its name in words.
pub fn family(model_type: &str) -> Result<(&'static Family, &'static str)> {
    FAMILIES
        .iter()
        .find_map(|f| {
            f.model_types
                .iter()
                .find(|(t, _)| *t == model_type)
                .map(|&(_, name)| (*f, name))
        })
        .ok_or_else(|| {
            let names: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.model_types.iter().map(|(t, _)| *t))
                .collect();
            anyhow::anyhow!(
                "model_type {model_type:?} is not supported; bert-cli runs these families: {}",
                names.join(", ")
            )
        })
}

/// Reads and validates `config.json`, naming the file in every error.
pub fn read_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read model config {}", path.display()))?;
    parse_config(&text).with_context(|| format!("invalid model config {}", path.display()))
}

/// Parses the JSON text of a `config.json`. The family is read first, so an
/// unsupported one is named before any field it lacks.
pub fn parse_config(text: &str) -> Result<Config> {
    let json: serde_json::Value = serde_json::from_str(text)?;
    let model_type = match json.get("model_type") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        Some(other) => anyhow::bail!("model_type {other} is not a string"),
    };
    let assumed = model_type.is_none();
    let model_type = model_type.unwrap_or_else(|| "bert".into());
    let (family, name) = family(&model_type)?;
    let kind = Kind {
        model_type,
        assumed,
        name,
    };
    let cfg = Config::parse(json, kind, &family.config).map_err(|err| {
        if assumed {
            err.context(
                "config.json names no model_type, so BERT was assumed: add the right one \
                 (such as \"distilbert\" or \"roberta\")",
            )
        } else {
            err
        }
    })?;
    (family.check)(&cfg)?;
    Ok(cfg)
}

/// Builds the classifier `cfg` describes from the checkpoint under `ld`.
pub fn load(ld: Loader, cfg: &Config, policy: HeadPolicy) -> Result<Box<dyn Classifier>> {
    let (family, _) = family(&cfg.model_type)?;
    (family.load)(ld, cfg, policy)
}

#[cfg(test)]
mod tests {
    use super::config::{labels_are_generic, Scoring};
    use super::*;
    use crate::layers::Activation;

    const BASE: &str = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16"#;

    #[test]
    fn defaults_and_generic_labels() {
        let cfg = parse_config(&format!("{BASE}}}")).unwrap();
        assert_eq!(cfg.hidden_act, Activation::GeluErf);
        assert_eq!(cfg.labels, vec!["LABEL_0", "LABEL_1"]);
        assert!(labels_are_generic(&cfg.labels));
        assert_eq!(cfg.scoring(2), Scoring::Softmax);
        assert_eq!(cfg.scoring(1), Scoring::Sigmoid);
    }

    #[test]
    fn id2label_is_ordered_by_index_not_text() {
        let cfg = parse_config(&format!(
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
            "n_heads": 2, "hidden_dim": 16, "max_position_embeddings": 16, "activation": "relu",
            "layer_norm_eps": 0.5}"#;
        let cfg = parse_config(distil).unwrap();
        assert_eq!(cfg.family_name, "DistilBERT");
        assert_eq!((cfg.hidden_size, cfg.intermediate_size), (8, 16));
        assert_eq!(cfg.hidden_act, Activation::Relu);
        assert_eq!((cfg.layer_norm_eps, cfg.type_vocab_size), (1e-12, 0));
        let roberta = format!(r#"{BASE}, "model_type": "xlm-roberta", "pad_token_id": 1}}"#);
        let cfg = parse_config(&roberta).unwrap();
        assert_eq!((cfg.family_name, cfg.max_tokens()), ("XLM-RoBERTa", 14));
        assert_eq!(cfg.layer_norm_eps, 1e-5);
        let deberta = format!(
            r#"{BASE}, "model_type": "deberta-v2", "relative_attention": true,
            "pos_att_type": "p2c|c2p", "position_buckets": 4, "max_relative_positions": -1}}"#
        );
        let cfg = parse_config(&deberta).unwrap();
        let rel = deberta_v2::relative(&cfg).unwrap().unwrap();
        assert!(rel.c2p && rel.p2c && !rel.share_att_key);
        assert_eq!((rel.span(), rel.max_relative_positions), (4, 16));
        assert_eq!(cfg.layer_norm_eps, 1e-7);
    }

    #[test]
    fn every_model_type_is_listed_once() {
        let mut types: Vec<&str> = FAMILIES
            .iter()
            .flat_map(|f| f.model_types.iter().map(|(t, _)| *t))
            .collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n, "a model_type names two families");
    }

    #[test]
    fn unsupported_family_is_named_before_missing_fields() {
        let err = parse_config(r#"{"model_type": "gpt2", "n_embd": 8}"#).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("\"gpt2\"") && msg.contains("distilbert, roberta"),
            "{msg}"
        );
    }

    #[test]
    fn a_family_refuses_its_own_fields_when_read() {
        let err = parse_config(&format!(
            r#"{BASE}, "model_type": "deberta-v2", "relative_attention": true, "pos_att_type": ["c2c"]}}"#
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("\"c2c\""), "{err:#}");
        let err = parse_config(&format!(
            r#"{BASE}, "model_type": "deberta-v2", "conv_kernel_size": 3}}"#
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("conv_kernel_size 3"), "{err:#}");
    }

    #[test]
    fn refuses_unknown_activation_and_bad_heads() {
        let err = parse_config(&format!(r#"{BASE}, "hidden_act": "swiglu"}}"#)).unwrap_err();
        assert!(format!("{err:#}").contains("swiglu"));
        let bad = BASE.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
        let err = parse_config(&format!("{bad}}}")).unwrap_err();
        assert!(format!("{err:#}").contains("divisible"));
    }
}
