//! ELECTRA for sequence classification (`modeling_electra.py`): embeddings of
//! `embedding_size`, projected to the hidden size (`embeddings_project`) when they
//! differ, BERT's layers under `electra.`, and `classifier.dense` + GELU +
//! `classifier.out_proj` on `[CLS]`.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::Config;
use super::encoder::{
    encoder_root, Embed, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES,
};
use super::head::{FirstTokenHead, HeadPolicy};
use crate::layers::{Activation, Backend, Linear, Positions};

/// `electra.embeddings`, then `electra.embeddings_project` when present.
pub struct ElectraEmbeddings {
    embeddings: NormedEmbeddings,
    project: Option<Linear>,
}

impl Embed for ElectraEmbeddings {
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let x = self.embeddings.forward(ids, type_ids)?;
        match &self.project {
            Some(project) => project.forward(&x),
            None => Ok(x),
        }
    }
}

/// `ElectraForSequenceClassification`.
pub type ElectraForSequenceClassification = SequenceClassifier<ElectraEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: VarBuilder,
    cfg: &Config,
    policy: HeadPolicy,
    backend: Backend,
) -> Result<ElectraForSequenceClassification> {
    let electra = encoder_root(&vb, "electra", cfg)?;
    let (e, h) = (cfg.embedding_size, cfg.hidden_size);
    let classifier = vb.pp("classifier");
    Ok(SequenceClassifier {
        embeddings: ElectraEmbeddings {
            embeddings: NormedEmbeddings::load(
                electra.pp("embeddings"),
                cfg,
                e,
                Positions::FromZero,
                true,
                backend,
            )?,
            project: (e != h)
                .then(|| Linear::load(electra.pp("embeddings_project"), e, h, backend))
                .transpose()?,
        },
        encoder: Encoder::load(electra.pp("encoder").pp("layer"), cfg, &BERT_NAMES, backend)?,
        head: FirstTokenHead::load(
            classifier.pp("dense"),
            classifier.pp("out_proj"),
            h,
            Activation::GeluErf,
            cfg,
            policy,
            backend,
        )?,
    })
}
