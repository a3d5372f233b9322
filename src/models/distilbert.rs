//! DistilBERT for sequence classification (`modeling_distilbert.py`): BERT's layer
//! under other names (`q_lin`, `sa_layer_norm`, `ffn.lin1`, ...), no token types, and
//! `pre_classifier` + ReLU + `classifier` on `[CLS]`.

use anyhow::Result;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{Config, Defaults};
use super::encoder::{encoder_root, Encoder, LayerNames, NormedEmbeddings, SequenceClassifier};
use super::family::{no_check, Family};
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{Activation, Loader, Positions};

/// `distilbert`: its config names the sizes its own way, and its LayerNorms are fixed at
/// 1e-12 whatever the config says.
pub const FAMILY: Family = Family {
    model_types: &[("distilbert", "DistilBERT")],
    config: Defaults {
        type_vocab_size: 0,
        eps_fixed: true,
        renames: &[
            ("dim", "hidden_size"),
            ("n_layers", "num_hidden_layers"),
            ("n_heads", "num_attention_heads"),
            ("hidden_dim", "intermediate_size"),
            ("activation", "hidden_act"),
        ],
        ..Defaults::BERT
    },
    check: no_check,
    head: "classifier",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// `distilbert.transformer.layer.N`'s names.
const NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// `DistilBertForSequenceClassification`.
pub type DistilBertForSequenceClassification = SequenceClassifier<NormedEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: Loader,
    cfg: &Config,
    policy: HeadPolicy,
) -> Result<DistilBertForSequenceClassification> {
    let distil = encoder_root(&vb, "distilbert", cfg)?;
    let h = cfg.hidden_size;
    Ok(SequenceClassifier {
        embeddings: NormedEmbeddings::load(
            &distil.pp("embeddings"),
            cfg,
            h,
            Positions::FromZero,
            false,
        )?,
        encoder: Encoder::load(&distil.pp("transformer").pp("layer"), cfg, &NAMES)?,
        head: FirstTokenHead::load(
            HeadSpec {
                dense: vb.pp("pre_classifier"),
                out: vb.pp(FAMILY.head),
                width: h,
                act: Activation::Relu,
            },
            cfg,
            policy,
        )?,
    })
}
