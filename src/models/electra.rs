//! ELECTRA for sequence classification (`modeling_electra.py`): embeddings of
//! `embedding_size`, projected to the hidden size (`embeddings_project`) when they
//! differ, BERT's layers under `electra.`, and `classifier.dense` + GELU +
//! `classifier.out_proj` on `[CLS]`.

use anyhow::Result;
use candle_core::Tensor;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{Config, Defaults};
use super::encoder::{
    encoder_root, Embed, Encoder, NormedEmbeddings, SequenceClassifier, BERT_NAMES,
};
use super::family::{no_check, Family};
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{Activation, Linear, Loader, Positions};

/// `electra`: BERT's layers, embeddings projected when narrower than the encoder.
pub const FAMILY: Family = Family {
    model_types: &[("electra", "ELECTRA")],
    config: Defaults::BERT,
    check: no_check,
    head: "classifier.out_proj",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

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
    vb: Loader,
    cfg: &Config,
    policy: HeadPolicy,
) -> Result<ElectraForSequenceClassification> {
    let electra = encoder_root(&vb, "electra", cfg)?;
    let (e, h) = (cfg.embedding_size, cfg.hidden_size);
    Ok(SequenceClassifier {
        embeddings: ElectraEmbeddings {
            embeddings: NormedEmbeddings::load(
                &electra.pp("embeddings"),
                cfg,
                e,
                Positions::FromZero,
                true,
            )?,
            project: (e != h)
                .then(|| Linear::load(&electra.pp("embeddings_project"), e, h))
                .transpose()?,
        },
        encoder: Encoder::load(&electra.pp("encoder").pp("layer"), cfg, &BERT_NAMES)?,
        head: FirstTokenHead::load(
            HeadSpec {
                dense: vb.pp("classifier.dense"),
                out: vb.pp(FAMILY.head),
                width: h,
                act: Activation::GeluErf,
            },
            cfg,
            policy,
        )?,
    })
}
