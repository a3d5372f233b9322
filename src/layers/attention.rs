//! Multi-head self-attention: the part of an encoder people come to look at. Q, K and V
//! projections, scaled dot-product scores, the padding mask, softmax, and the context;
//! the output projection after it is the model's.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::{Backend, Linear, Loader, Sequences};
use crate::kernels::cpu;

pub use crate::kernels::cpu::Queries;

/// Self-attention's projections and how its scores are computed.
pub struct SelfAttention {
    /// Q, K and V stacked into one `[3 * hidden, hidden]` projection, so the input is read
    /// once; Q's rows carry the 1/sqrt(head_dim) score scale, which saves a pass per layer.
    qkv: Linear,
    scores: Scores,
    shape: cpu::Shape,
}

/// How scores, softmax and context are computed, chosen at load.
enum Scores {
    /// candle's ops, head by head: a copy to split the heads, two batched matmuls; the
    /// softmax (always f32) on the CPU kernel when `cpu_softmax`.
    SplitHeads { cpu_softmax: bool },
    /// The CPU kernel, one task per (sequence, head); `folded` holds the keys and values
    /// in the form a first-token-only query uses (the last layer's, when it fits).
    Fused { folded: Option<cpu::ClsAttention> },
}

impl SelfAttention {
    /// From the `query`, `key` and `value` projections (`weight` `[hidden, hidden]`,
    /// `bias` `[hidden]` under each), split into `heads`. `fold_first_token`: this layer
    /// will mostly run with `Queries::First` (an encoder's last layer under a
    /// first-token head), so on the CPU kernels its keys and values are also kept folded
    /// into the form a lone query uses (`cls_attention`).
    pub fn load(
        query: &Loader,
        key: &Loader,
        value: &Loader,
        hidden: usize,
        heads: usize,
        fold_first_token: bool,
    ) -> Result<Self> {
        let h = hidden;
        let shape = cpu::Shape {
            heads,
            head_dim: h / heads.max(1),
        };
        let scale = 1.0 / (shape.head_dim as f64).sqrt();
        let (qw, qb) = (query.get((h, h), "weight")?, query.get(h, "bias")?);
        let (kw, kb) = (key.get((h, h), "weight")?, key.get(h, "bias")?);
        let (vw, vb) = (value.get((h, h), "weight")?, value.get(h, "bias")?);
        let scores = match query.backend {
            Backend::Kernels => Scores::Fused {
                folded: (fold_first_token && cpu::ClsAttention::fits(shape))
                    .then(|| cpu::ClsAttention::new(&kw, &vw, &vb, shape))
                    .transpose()?,
            },
            Backend::Candle => Scores::SplitHeads { cpu_softmax: false },
            Backend::CandleCpu { .. } => Scores::SplitHeads { cpu_softmax: true },
        };
        let weight = Tensor::cat(&[(qw * scale)?, kw, vw], 0)?;
        let bias = Tensor::cat(&[(qb * scale)?, kb, vb], 0)?;
        Ok(Self {
            qkv: Linear::new(weight, bias, query)?,
            scores,
            shape,
        })
    }

    /// The Q/K/V projection (one dense layer), for `--quantize q8` to calibrate and
    /// convert.
    pub fn projections_mut(&mut self) -> &mut Linear {
        &mut self.qkv
    }

    /// `x` holds the hidden states as `seqs` lays them out. Returns the context for
    /// `queries` (`[batch, seq, hidden]` or `[1, tokens, hidden]` like `x`, or `[batch,
    /// 1, hidden]` for `Queries::First`) and, when `keep_probs`, the probabilities
    /// `[batch, heads, seq, seq]` (f32; for `Queries::All` on the padded batch).
    ///
    /// `Queries::First` is for the last layer when only the first token is read: keys
    /// and values still come from every token, but scores, output projection and the
    /// feed-forward after it run on one row per sequence instead of `seq`: three quarters
    /// of the layer's dense arithmetic, an eighth of all of MiniLM's. On the CPU kernels
    /// the queries, too, are projected for the first tokens alone, and with the folded
    /// keys and values no key or value is formed at all.
    pub fn forward(
        &self,
        x: &Tensor,
        seqs: &Sequences,
        queries: Queries,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, h) = x.dims3()?;
        let batch = seqs.batch();
        if let (
            Queries::First,
            Scores::Fused {
                folded: Some(folded),
            },
            Some(packed),
        ) = (queries, &self.scores, self.qkv.packed())
        {
            // Queries for the first tokens alone (Q's columns lead the stacked weight);
            // keys and values are never formed.
            let rows = x.reshape((b * t, h))?;
            let q = packed.lead_for_rows(&rows, h, seqs.first_rows())?;
            let ctx = folded.forward(&rows, &q, seqs.rows())?;
            return Ok((ctx.reshape((batch, 1, h))?, None));
        }
        let qkv = match queries {
            Queries::All => self.qkv.forward(x)?,
            Queries::First => self.qkv.forward_lead_for_rows(x, h, seqs.first_rows())?,
        };
        // `qkv` (three times the hidden states) is freed on return, before the output
        // projection allocates: it set bert-base's peak memory.
        match self.scores {
            Scores::Fused { .. } => {
                let qkv = qkv.reshape((b * t, 3 * h))?.contiguous()?;
                let (ctx, probs) =
                    cpu::attention(&qkv, seqs.rows(), self.shape, queries, keep_probs)?;
                let ctx = match queries {
                    Queries::All => ctx.reshape((b, t, h))?,
                    Queries::First => ctx.reshape((batch, 1, h))?,
                };
                Ok((ctx, probs))
            }
            Scores::SplitHeads { cpu_softmax } => {
                self.split_heads(&qkv, &seqs.mask_bias, queries, keep_probs, cpu_softmax)
            }
        }
    }

    /// Attention through candle's ops: the context for `queries` (`[batch, seq or 1,
    /// hidden]`) and, when `keep_probs`, the probabilities.
    fn split_heads(
        &self,
        qkv: &Tensor,
        mask_bias: &Tensor,
        queries: Queries,
        keep_probs: bool,
        cpu_softmax: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let b = qkv.dim(0)?;
        let cpu::Shape { heads, head_dim } = self.shape;
        let (q, k, v) = separate_qkv(qkv, heads, head_dim)?;
        let q = match queries {
            Queries::All => q,
            Queries::First => q.narrow(2, 0, 1)?.contiguous()?,
        };
        let scores = q.matmul(&k.t()?)?;
        let (ctx, probs) = softmax_context(scores, mask_bias, &v, cpu_softmax)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, ctx.dim(2)?, ()))?;
        Ok((ctx, keep_probs.then_some(probs)))
    }
}

/// `[b, t, 3 * heads * d]` stacked projections -> Q, K, V, each `[b, heads, t, d]`: one
/// copy gives all three contiguous.
pub(super) fn separate_qkv(
    qkv: &Tensor,
    heads: usize,
    d: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = qkv.dims3()?;
    let qkv = qkv
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

/// Softmax of `scores` `[b, heads, q, k]` with the padding bias, then the context
/// `[b, heads, q, d]` from `v`; returns both (the probabilities in f32).
///
/// Softmax runs in f32 whatever the model dtype: half-precision exponentials of large
/// logits overflow, and the padding bias must stay a finite number, not -inf.
pub(super) fn softmax_context(
    scores: Tensor,
    mask_bias: &Tensor,
    v: &Tensor,
    cpu_softmax: bool,
) -> Result<(Tensor, Tensor)> {
    let in_dtype = scores.dtype();
    let scores = scores.to_dtype(DType::F32)?;
    let probs = if cpu_softmax {
        cpu::masked_softmax(&scores.contiguous()?, &mask_bias.contiguous()?)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask_bias)?)?
    };
    let ctx = probs.to_dtype(in_dtype)?.matmul(v)?;
    Ok((ctx, probs))
}
