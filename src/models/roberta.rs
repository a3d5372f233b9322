//! RoBERTa, XLM-RoBERTa and CamemBERT for sequence classification
//! (`modeling_roberta.py`; the other two reuse it): BERT's layers under `roberta.`,
//! positions counted past the padding id, and a head of its own on `<s>`:
//! `classifier.dense` + tanh + `classifier.out_proj`.

use anyhow::Result;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{Config, Defaults};
use super::encoder::{encoder_root, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES};
use super::family::{no_check, Family};
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{Activation, Loader, Positions};

/// `roberta`, `xlm-roberta`, `camembert`: BERT's layers, positions past the padding id.
pub const FAMILY: Family = Family {
    model_types: &[
        ("roberta", "RoBERTa"),
        ("xlm-roberta", "XLM-RoBERTa"),
        ("camembert", "CamemBERT"),
    ],
    config: Defaults {
        type_vocab_size: 1,
        layer_norm_eps: 1e-5,
        pad_token_id: 1,
        positions_past_padding: true,
        ..Defaults::BERT
    },
    check: no_check,
    head: "classifier.out_proj",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// `RobertaForSequenceClassification` (and its XLM-R / CamemBERT twins).
pub type RobertaForSequenceClassification = SequenceClassifier<NormedEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: Loader,
    cfg: &Config,
    policy: HeadPolicy,
) -> Result<RobertaForSequenceClassification> {
    let roberta = encoder_root(&vb, "roberta", cfg)?;
    let h = cfg.hidden_size;
    let positions = Positions::PastPadding {
        padding_idx: cfg.pad_token_id as u32,
    };
    Ok(SequenceClassifier {
        embeddings: NormedEmbeddings::load(
            &roberta.pp("embeddings"),
            cfg,
            h,
            positions,
            cfg.type_vocab_size > 0,
        )?,
        encoder: Encoder::load(&roberta.pp("encoder").pp("layer"), cfg, &BERT_NAMES)?,
        head: FirstTokenHead::load(
            HeadSpec {
                dense: vb.pp("classifier.dense"),
                out: vb.pp(FAMILY.head),
                width: h,
                act: Activation::Tanh,
            },
            cfg,
            policy,
        )?,
    })
}
