//! DistilBERT for sequence classification (`modeling_distilbert.py`): BERT's layer
//! under other names (`q_lin`, `sa_layer_norm`, `ffn.lin1`, ...), no token types, and
//! `pre_classifier` + ReLU + `classifier` on `[CLS]`.

use anyhow::Result;
use candle_nn::VarBuilder;

use super::config::Config;
use super::encoder::{encoder_root, Encoder, LayerNames, NormedEmbeddings, SequenceClassifier};
use super::head::{FirstTokenHead, HeadPolicy};
use crate::layers::{Activation, Backend, Positions};

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
    vb: VarBuilder,
    cfg: &Config,
    policy: HeadPolicy,
    backend: Backend,
) -> Result<DistilBertForSequenceClassification> {
    let distil = encoder_root(&vb, "distilbert", cfg)?;
    let h = cfg.hidden_size;
    Ok(SequenceClassifier {
        embeddings: NormedEmbeddings::load(
            distil.pp("embeddings"),
            cfg,
            h,
            Positions::FromZero,
            false,
            backend,
        )?,
        encoder: Encoder::load(distil.pp("transformer").pp("layer"), cfg, &NAMES, backend)?,
        head: FirstTokenHead::load(
            vb.pp("pre_classifier"),
            vb.pp("classifier"),
            h,
            Activation::Relu,
            cfg,
            policy,
            backend,
        )?,
    })
}
