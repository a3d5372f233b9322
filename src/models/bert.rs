//! BERT for sequence classification, as `modeling_bert.py` defines it: embeddings, a
//! stack of post-norm layers, a pooler on `[CLS]` (+ tanh) and a linear classifier.
//! Weight names are the checkpoint's own, with or without the `bert.` prefix, LayerNorms
//! as `weight`/`bias` or `gamma`/`beta`.

use anyhow::Result;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{Config, Defaults};
use super::encoder::{encoder_root, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES};
use super::family::{no_check, Family};
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{Activation, Loader, Positions};

/// `bert`, and configs without a `model_type` (old BERT ones).
pub const FAMILY: Family = Family {
    model_types: &[("bert", "BERT")],
    config: Defaults::BERT,
    check: no_check,
    head: "classifier",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// `BertForSequenceClassification`: `bert.embeddings`, `bert.encoder.layer.N`,
/// `bert.pooler.dense` + tanh, `classifier`.
pub type BertForSequenceClassification = SequenceClassifier<NormedEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(vb: Loader, cfg: &Config, policy: HeadPolicy) -> Result<BertForSequenceClassification> {
    let bert = encoder_root(&vb, "bert", cfg)?;
    let h = cfg.hidden_size;
    Ok(SequenceClassifier {
        // In checkpoint order: the large word table first, before the layers' load-time
        // buffers come and go (loaded after them, it could not reuse their freed memory:
        // 15 MiB more peak with MiniLM).
        embeddings: NormedEmbeddings::load(
            &bert.pp("embeddings"),
            cfg,
            h,
            Positions::FromZero,
            true,
        )?,
        encoder: Encoder::load(&bert.pp("encoder").pp("layer"), cfg, &BERT_NAMES)?,
        head: FirstTokenHead::load(
            HeadSpec {
                dense: bert.pp("pooler").pp("dense"),
                out: vb.pp(FAMILY.head),
                width: h,
                act: Activation::Tanh,
            },
            cfg,
            policy,
        )?,
    })
}
