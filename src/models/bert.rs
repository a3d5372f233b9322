//! BERT for sequence classification, as `modeling_bert.py` defines it: embeddings, a
//! stack of post-norm layers, a pooler on `[CLS]` (+ tanh) and a linear classifier.
//! Weight names are the checkpoint's own, with or without the `bert.` prefix, LayerNorms
//! as `weight`/`bias` or `gamma`/`beta`.

use anyhow::Result;
use candle_nn::VarBuilder;

use super::config::Config;
use super::encoder::{encoder_root, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES};
use super::head::{FirstTokenHead, HeadPolicy};
use crate::layers::{Activation, Backend, Positions};

/// `BertForSequenceClassification`: `bert.embeddings`, `bert.encoder.layer.N`,
/// `bert.pooler.dense` + tanh, `classifier`.
pub type BertForSequenceClassification = SequenceClassifier<NormedEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: VarBuilder,
    cfg: &Config,
    policy: HeadPolicy,
    backend: Backend,
) -> Result<BertForSequenceClassification> {
    let bert = encoder_root(&vb, "bert", cfg)?;
    let h = cfg.hidden_size;
    Ok(SequenceClassifier {
        // In checkpoint order: the large word table first, before the layers' load-time
        // buffers come and go (loaded after them, it could not reuse their freed memory:
        // 15 MiB more peak with MiniLM).
        embeddings: NormedEmbeddings::load(
            bert.pp("embeddings"),
            cfg,
            h,
            Positions::FromZero,
            true,
            backend,
        )?,
        encoder: Encoder::load(bert.pp("encoder").pp("layer"), cfg, &BERT_NAMES, backend)?,
        head: FirstTokenHead::load(
            bert.pp("pooler").pp("dense"),
            vb.pp("classifier"),
            h,
            Activation::Tanh,
            cfg,
            policy,
            backend,
        )?,
    })
}
