//! Multi-head self-attention: the part of BERT people come to look at.

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::cls_attention::ClsAttention;
use super::config::Config;
use super::fused::{Queries, Sequences};
use super::sgemm::NR;
use super::{layer_norm, Dense, Then};

/// `attention.self.*` (Q, K, V) and `attention.output.*` (projection + LayerNorm).
pub struct SelfAttention {
    /// Q, K and V stacked into one `[3 * hidden, hidden]` projection, so the input is read
    /// once; Q's rows carry the 1/sqrt(head_dim) score scale, which saves a pass per layer.
    qkv: Dense,
    /// The last layer's keys and values folded for one query per sequence.
    cls: Option<ClsAttention>,
    output: Dense,
    norm: super::ops::LayerNorm,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// Loads one layer's `attention` subtree. The encoder's `last` layer also keeps its
    /// keys and values in the folded form `[CLS]`-only attention uses (`cls_attention`),
    /// where the packed kernels run and the hidden size is whole panels.
    pub fn load(vb: VarBuilder, cfg: &Config, last: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        let s = vb.pp("self");
        let scale = 1.0 / (cfg.head_dim() as f64).sqrt();
        let (qw, qb) = (
            s.pp("query").get((h, h), "weight")?,
            s.pp("query").get(h, "bias")?,
        );
        let (kw, kb) = (
            s.pp("key").get((h, h), "weight")?,
            s.pp("key").get(h, "bias")?,
        );
        let (vw, vb_) = (
            s.pp("value").get((h, h), "weight")?,
            s.pp("value").get(h, "bias")?,
        );
        let shape = super::fused::Shape {
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        };
        let cls = if last && super::packed_kernels_for(&kw) && h.is_multiple_of(NR) {
            Some(ClsAttention::new(&kw, &vw, &vb_, shape)?)
        } else {
            None
        };
        let weight = Tensor::cat(&[(qw * scale)?, kw, vw], 0)?;
        let bias = Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?;
        Ok(Self {
            qkv: Dense::new(weight, bias)?,
            cls,
            output: Dense::load(vb.pp("output").pp("dense"), h, h)?,
            norm: layer_norm(vb.pp("output").pp("LayerNorm"), cfg)?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// Int8 projections (query/key/value and output).
    pub fn quantize_q8(&mut self) -> Result<()> {
        self.qkv.quantize_q8()?;
        self.output.quantize_q8()
    }

    /// `x` is `[batch, seq, hidden]`, or `[1, tokens, hidden]` with each text's real
    /// tokens back to back; `seqs` says which rows make each sequence. `mask_bias` is
    /// the padded batch's `[batch, 1, 1, seq]` f32, 0 for real tokens and a large negative
    /// number for padding (candle's path, which needs the padded layout, reads it).
    /// Returns the layer's output for `queries` (`x`'s shape, or `[batch, 1, hidden]` for
    /// `Queries::First`) and, when `keep_probs`, the post-softmax probabilities
    /// `[batch, heads, seq, seq]` (f32).
    ///
    /// `Queries::First` is for the last layer when only `[CLS]` is read: keys and values
    /// still come from every token, but scores, output projection and, after this, the
    /// feed-forward run on one row per sequence instead of `seq`: three quarters of the
    /// layer's dense arithmetic, an eighth of all of MiniLM's. On the packed kernel the
    /// queries, too, are projected for the first tokens alone (Q's columns come first in
    /// the stacked weight, whole panels of it): a twelfth of a layer's dense work more.
    pub fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        seqs: &Sequences,
        queries: Queries,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, h) = x.dims3()?;
        let batch = seqs.batch();
        if let (Queries::First, Some(cls), Some(packed)) = (queries, &self.cls, self.qkv.packed()) {
            if super::packed_kernels_for(x) {
                // Queries for the first tokens alone (Q's columns lead the stacked
                // weight); keys and values are never formed.
                let rows = x.reshape((b * t, h))?;
                let q = packed.lead_for_rows(&rows, h, &seqs.starts[..batch])?;
                let ctx = cls.forward(&rows, &q, seqs)?.reshape((batch, 1, h))?;
                return Ok((self.project(x, ctx, seqs, queries)?, None));
            }
        }
        let qkv = match queries {
            Queries::All => self.qkv.forward(x)?,
            Queries::First => self
                .qkv
                .forward_lead_for_rows(x, h, &seqs.starts[..batch])?,
        };
        // `qkv` (three times the hidden states) is freed here, before the output
        // projection allocates: it set bert-base's peak memory.
        let (ctx, probs) = if super::packed_kernels_for(x) {
            let shape = super::fused::Shape {
                heads: self.num_heads,
                head_dim: self.head_dim,
            };
            let qkv = qkv.reshape((b * t, 3 * h))?.contiguous()?;
            let (ctx, probs) = super::fused::attention(&qkv, seqs, shape, queries, keep_probs)?;
            let ctx = match queries {
                Queries::All => ctx.reshape((b, t, h))?,
                Queries::First => ctx.reshape((batch, 1, h))?,
            };
            (ctx, probs)
        } else {
            self.split_heads_attention(&qkv, mask_bias, queries, keep_probs)?
        };
        drop(qkv);
        Ok((self.project(x, ctx, seqs, queries)?, probs))
    }

    /// The output projection, residual and LayerNorm on the context `ctx` of `queries`.
    fn project(
        &self,
        x: &Tensor,
        ctx: Tensor,
        seqs: &Sequences,
        queries: Queries,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let batch = seqs.batch();
        let residual = match queries {
            Queries::All => x.clone(),
            Queries::First => {
                let first: Vec<u32> = seqs.starts[..batch].iter().map(|&r| r as u32).collect();
                let first = Tensor::new(first, x.device())?;
                x.reshape((b * t, h))?
                    .index_select(&first, 0)?
                    .reshape((batch, 1, h))?
            }
        };
        Ok(self
            .norm
            .forward_fresh(self.output.forward_then(&ctx, Then::Residual(&residual))?)?)
    }

    /// Attention through candle's ops, for GPUs, half precision and CPUs without AVX-512:
    /// returns the context for `queries` (`[batch, seq or 1, hidden]`) and, when
    /// `keep_probs`, the probabilities.
    fn split_heads_attention(
        &self,
        qkv: &Tensor,
        mask_bias: &Tensor,
        queries: Queries,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = qkv.dims3()?;
        // [b, t, 3, heads, d] -> [3, b, heads, t, d]: one copy gives contiguous Q, K and V.
        let qkv = qkv
            .reshape((b, t, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let q = match queries {
            Queries::All => q,
            Queries::First => q.narrow(2, 0, 1)?.contiguous()?,
        };
        let scores = q.matmul(&k.t()?)?;
        // Softmax in f32 whatever the model dtype: half-precision exponentials of large
        // logits overflow, and the padding bias must stay a finite number, not -inf.
        let in_dtype = scores.dtype();
        let probs = super::ops::masked_softmax(&scores.to_dtype(DType::F32)?, mask_bias)?;
        let ctx = probs.to_dtype(in_dtype)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, ctx.dim(2)?, ()))?;
        Ok((ctx, keep_probs.then_some(probs)))
    }
}
