//! RoBERTa, XLM-RoBERTa and CamemBERT for sequence classification
//! (`modeling_roberta.py`; the other two reuse it): BERT's layers under `roberta.`,
//! positions counted past the padding id, and a head of its own on `<s>`:
//! `classifier.dense` + tanh + `classifier.out_proj`.

use anyhow::Result;
use candle_nn::VarBuilder;

use super::config::Config;
use super::encoder::{encoder_root, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES};
use super::head::{FirstTokenHead, HeadPolicy};
use crate::layers::{Activation, Backend, Positions};

/// `RobertaForSequenceClassification` (and its XLM-R / CamemBERT twins).
pub type RobertaForSequenceClassification = SequenceClassifier<NormedEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: VarBuilder,
    cfg: &Config,
    policy: HeadPolicy,
    backend: Backend,
) -> Result<RobertaForSequenceClassification> {
    let roberta = encoder_root(&vb, "roberta", cfg)?;
    let h = cfg.hidden_size;
    let positions = Positions::PastPadding {
        padding_idx: cfg.pad_token_id as u32,
    };
    let classifier = vb.pp("classifier");
    Ok(SequenceClassifier {
        embeddings: NormedEmbeddings::load(
            roberta.pp("embeddings"),
            cfg,
            h,
            positions,
            cfg.type_vocab_size > 0,
            backend,
        )?,
        encoder: Encoder::load(roberta.pp("encoder").pp("layer"), cfg, &BERT_NAMES, backend)?,
        head: FirstTokenHead::load(
            classifier.pp("dense"),
            classifier.pp("out_proj"),
            h,
            Activation::Tanh,
            cfg,
            policy,
            backend,
        )?,
    })
}
