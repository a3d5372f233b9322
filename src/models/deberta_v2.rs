//! DeBERTa-v2 and v3 for sequence classification (`modeling_deberta_v2.py`): BERT's
//! post-norm layers with disentangled attention over relative positions
//! (`encoder.rel_embeddings`, normalised by `encoder.LayerNorm` when `norm_rel_ebd`
//! says so), absolute positions only when `position_biased_input`, and
//! `pooler.dense` + `pooler_hidden_act` + `classifier` on `[CLS]`.

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::Deserialize;

use super::classifier::{Classifier, HeadPolicy};
use super::config::{parse_act, Config, Defaults};
use super::encoder::{encoder_root, Attention, Embed, Encoder, SequenceClassifier, BERT_NAMES};
use super::family::Family;
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{
    Activation, DisentangledAttention, Embeddings, LayerNorm, Linear, Loader, Positions,
    RelativePositions,
};

/// `deberta-v2` (DeBERTa-v2 and v3): disentangled attention over relative positions.
pub const FAMILY: Family = Family {
    model_types: &[("deberta-v2", "DeBERTa-v2")],
    config: Defaults {
        type_vocab_size: 0,
        layer_norm_eps: 1e-7,
        ..Defaults::BERT
    },
    check,
    head: "classifier",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// The `config.json` fields DeBERTa alone reads.
#[derive(Debug, Clone, Deserialize)]
struct Fields {
    #[serde(default)]
    relative_attention: bool,
    #[serde(default)]
    position_buckets: Option<i64>,
    #[serde(default)]
    max_relative_positions: Option<i64>,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default)]
    share_att_key: bool,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default)]
    position_biased_input: Option<bool>,
    #[serde(default)]
    pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pooler_hidden_act: Option<String>,
    #[serde(default)]
    conv_kernel_size: Option<usize>,
}

/// `pos_att_type`: a list, or one string with `|` between entries (older configs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

impl PosAttType {
    fn entries(&self) -> Vec<String> {
        match self {
            Self::List(v) => v.iter().map(|s| s.trim().to_lowercase()).collect(),
            Self::Joined(s) => s
                .split('|')
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// DeBERTa-v2's relative-position settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Relative {
    /// Log-spaced buckets beyond this many positions each way; 0 for none.
    pub position_buckets: usize,
    /// Largest relative distance told apart (`max_relative_positions`, or the position
    /// table's size when that is below 1).
    pub max_relative_positions: usize,
    /// Content-to-position scores (`c2p` in `pos_att_type`).
    pub c2p: bool,
    /// Position-to-content scores (`p2c`).
    pub p2c: bool,
    /// Positions projected by the content query/key layers (no `pos_*_proj` of their own).
    pub share_att_key: bool,
    /// `norm_rel_ebd` has `layer_norm`: the position table goes through `encoder.LayerNorm`.
    pub norm_rel_ebd: bool,
}

impl Relative {
    /// Rows of `encoder.rel_embeddings`: twice the attention span.
    pub fn span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions
        }
    }
}

/// Refuses what bert-cli does not run: the convolution layer, position scores other
/// than c2p and p2c, an unknown pooler activation.
fn check(cfg: &Config) -> Result<()> {
    let fields: Fields = cfg.fields()?;
    if fields.conv_kernel_size.unwrap_or(0) > 0 {
        bail!(
            "conv_kernel_size {} (DeBERTa's convolution layer) is not supported",
            fields.conv_kernel_size.unwrap_or(0)
        );
    }
    relative_from(cfg, &fields)?;
    pooler(cfg, &fields)?;
    Ok(())
}

/// The relative-attention settings, when on.
pub fn relative(cfg: &Config) -> Result<Option<Relative>> {
    relative_from(cfg, &cfg.fields()?)
}

fn relative_from(cfg: &Config, fields: &Fields) -> Result<Option<Relative>> {
    if !fields.relative_attention {
        return Ok(None);
    }
    let types = fields
        .pos_att_type
        .as_ref()
        .map(PosAttType::entries)
        .unwrap_or_default();
    if let Some(t) = types.iter().find(|t| *t != "c2p" && *t != "p2c") {
        bail!("pos_att_type {t:?} is not supported; bert-cli knows c2p and p2c");
    }
    let max_rel = fields.max_relative_positions.unwrap_or(-1);
    let max_relative_positions = if max_rel < 1 {
        cfg.max_position_embeddings
    } else {
        max_rel as usize
    };
    let norm = fields
        .norm_rel_ebd
        .as_deref()
        .unwrap_or("none")
        .to_lowercase();
    Ok(Some(Relative {
        position_buckets: fields.position_buckets.unwrap_or(-1).max(0) as usize,
        max_relative_positions,
        c2p: types.iter().any(|t| t == "c2p"),
        p2c: types.iter().any(|t| t == "p2c"),
        share_att_key: fields.share_att_key,
        norm_rel_ebd: norm.split('|').any(|s| s.trim() == "layer_norm"),
    }))
}

/// The pooler's width and activation.
fn pooler(cfg: &Config, fields: &Fields) -> Result<(usize, Activation)> {
    Ok((
        fields.pooler_hidden_size.unwrap_or(cfg.hidden_size),
        match &fields.pooler_hidden_act {
            Some(name) => parse_act(name)?,
            None => Activation::GeluErf,
        },
    ))
}

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
    vb: Loader,
    cfg: &Config,
    policy: HeadPolicy,
) -> Result<DebertaV2ForSequenceClassification> {
    let fields: Fields = cfg.fields()?;
    let deberta = encoder_root(&vb, "deberta", cfg)?;
    let (e, h) = (cfg.embedding_size, cfg.hidden_size);
    let emb = deberta.pp("embeddings");
    let table = |name: &str, rows: usize| emb.pp(name).get((rows, e), "weight");
    let embeddings = DebertaEmbeddings {
        sum: Embeddings::new(
            table("word_embeddings", cfg.vocab_size)?,
            fields
                .position_biased_input
                .unwrap_or(true)
                .then(|| table("position_embeddings", cfg.max_position_embeddings))
                .transpose()?
                .map(|t| (t, Positions::FromZero)),
            (cfg.type_vocab_size > 0)
                .then(|| table("token_type_embeddings", cfg.type_vocab_size))
                .transpose()?,
            &emb,
        )?,
        project: (e != h)
            .then(|| -> Result<Linear> {
                let w = emb.pp("embed_proj").get((h, e), "weight")?;
                let b = Tensor::zeros(h, w.dtype(), w.device())?;
                Linear::new(w, b, &emb)
            })
            .transpose()?,
        norm: LayerNorm::load(&emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
    };
    let encoder = deberta.pp("encoder");
    let rel = match relative_from(cfg, &fields)? {
        Some(r) => {
            let table = encoder
                .pp("rel_embeddings")
                .get((2 * r.span(), h), "weight")?;
            // Normalised once here, with candle's ops: the table is a constant, and the
            // CPU LayerNorm would overwrite the loaded tensor in place.
            let table = if r.norm_rel_ebd {
                LayerNorm::load(
                    &encoder.pp("LayerNorm").for_constants(),
                    h,
                    cfg.layer_norm_eps,
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
    let encoder = Encoder::load_with(&encoder.pp("layer"), cfg, &BERT_NAMES, |vb, _| {
        Ok(Attention::Disentangled(DisentangledAttention::load(
            &vb.pp("attention").pp("self"),
            h,
            cfg.num_heads,
            rel.as_ref().map(|(t, r)| (t, *r)),
        )?))
    })?;
    let (width, act) = pooler(cfg, &fields)?;
    Ok(SequenceClassifier {
        embeddings,
        encoder,
        head: FirstTokenHead::load(
            HeadSpec {
                dense: vb.pp("pooler.dense"),
                out: vb.pp(FAMILY.head),
                width,
                act,
            },
            cfg,
            policy,
        )?,
    })
}
