//! DeBERTa-v2 and v3 for sequence classification (`modeling_deberta_v2.py`): BERT's
//! post-norm layers with disentangled attention over relative positions
//! (`encoder.rel_embeddings`, normalised by `encoder.LayerNorm` when `norm_rel_ebd`
//! says so), absolute positions only when `position_biased_input`, and
//! `pooler.dense` + `pooler_hidden_act` + `classifier` on `[CLS]`.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::Config;
use super::encoder::{encoder_root, Attention, Embed, Encoder, SequenceClassifier, BERT_NAMES};
use super::head::{FirstTokenHead, HeadPolicy};
use crate::layers::{
    Backend, DisentangledAttention, Embeddings, LayerNorm, Linear, Positions, RelativePositions,
};

/// `deberta.embeddings`: word (+ position) (+ token type), projected to the hidden size
/// by `embed_proj` (no bias) when narrower, then `LayerNorm`.
pub struct DebertaEmbeddings {
    sum: Embeddings,
    project: Option<Linear>,
    norm: LayerNorm,
}

impl Embed for DebertaEmbeddings {
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let x = self.sum.forward(ids, type_ids)?;
        let x = match &self.project {
            Some(project) => project.forward(&x)?,
            None => x,
        };
        // transformers then zeroes the padding rows; nothing reads them (attention
        // masks them as keys, and their own outputs are dropped).
        self.norm.forward_fresh(x)
    }
}

/// `DebertaV2ForSequenceClassification`.
pub type DebertaV2ForSequenceClassification = SequenceClassifier<DebertaEmbeddings>;

/// Builds the model from a checkpoint.
pub fn load(
    vb: VarBuilder,
    cfg: &Config,
    policy: HeadPolicy,
    backend: Backend,
) -> Result<DebertaV2ForSequenceClassification> {
    let deberta = encoder_root(&vb, "deberta", cfg)?;
    let (e, h) = (cfg.embedding_size, cfg.hidden_size);
    let emb = deberta.pp("embeddings");
    let table = |name: &str, rows: usize| emb.pp(name).get((rows, e), "weight");
    let embeddings = DebertaEmbeddings {
        sum: Embeddings::new(
            table("word_embeddings", cfg.vocab_size)?,
            cfg.position_biased_input
                .then(|| table("position_embeddings", cfg.max_position_embeddings))
                .transpose()?
                .map(|t| (t, Positions::FromZero)),
            (cfg.type_vocab_size > 0)
                .then(|| table("token_type_embeddings", cfg.type_vocab_size))
                .transpose()?,
            backend,
        )?,
        project: (e != h)
            .then(|| -> Result<Linear> {
                let w = emb.pp("embed_proj").get((h, e), "weight")?;
                let b = Tensor::zeros(h, w.dtype(), w.device())?;
                Linear::new(w, b, backend)
            })
            .transpose()?,
        norm: LayerNorm::load(emb.pp("LayerNorm"), h, cfg.layer_norm_eps, backend)?,
    };
    let encoder = deberta.pp("encoder");
    let rel = match &cfg.relative {
        Some(r) => {
            let table = encoder
                .pp("rel_embeddings")
                .get((2 * r.span(), h), "weight")?;
            // Normalised once here, with candle's ops: the table is a constant, and the
            // CPU LayerNorm would overwrite the loaded tensor in place.
            let table = if r.norm_rel_ebd {
                LayerNorm::load(
                    encoder.pp("LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                    Backend::Candle,
                )?
                .forward_fresh(table)?
            } else {
                table
            };
            let positions = RelativePositions {
                buckets: r.position_buckets,
                max_distance: r.max_relative_positions,
                c2p: r.c2p,
                p2c: r.p2c,
                share_keys: r.share_att_key,
            };
            Some((table, positions))
        }
        None => None,
    };
    let encoder = Encoder::load_with(encoder.pp("layer"), cfg, &BERT_NAMES, backend, |vb, _| {
        Ok(Attention::Disentangled(DisentangledAttention::load(
            vb.pp("attention").pp("self"),
            h,
            cfg.num_heads,
            rel.as_ref().map(|(t, r)| (t, *r)),
            backend,
        )?))
    })?;
    Ok(SequenceClassifier {
        embeddings,
        encoder,
        head: FirstTokenHead::load(
            vb.pp("pooler").pp("dense"),
            vb.pp("classifier"),
            cfg.pooler_hidden_size,
            cfg.pooler_act,
            cfg,
            policy,
            backend,
        )?,
    })
}
