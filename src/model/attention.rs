//! Multi-head self-attention: the part of BERT people come to look at.

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::{LayerNorm, Linear, Module, VarBuilder};

use super::config::Config;
use super::{layer_norm, linear};

/// `attention.self.*` (Q, K, V) and `attention.output.*` (projection + LayerNorm).
pub struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// Loads one layer's `attention` subtree.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let s = vb.pp("self");
        Ok(Self {
            query: linear(s.pp("query"), h, h)?,
            key: linear(s.pp("key"), h, h)?,
            value: linear(s.pp("value"), h, h)?,
            output: linear(vb.pp("output").pp("dense"), h, h)?,
            norm: layer_norm(vb.pp("output").pp("LayerNorm"), cfg)?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `[batch, seq, hidden]` -> `[batch, heads, seq, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `x` is `[batch, seq, hidden]`; `mask_bias` is `[batch, 1, 1, seq]` f32, 0 for real
    /// tokens and a large negative number for padding. Returns the layer's output and,
    /// when `keep_probs`, the post-softmax probabilities `[batch, heads, seq, seq]` (f32).
    pub fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, h) = x.dims3()?;
        let q = self.split_heads(&self.query.forward(x)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        // Softmax in f32 whatever the model dtype: half-precision exponentials of large
        // logits overflow, and the padding bias must stay a finite number, not -inf.
        let in_dtype = scores.dtype();
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask_bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.to_dtype(in_dtype)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, h))?;
        let out = self.norm.forward(&(self.output.forward(&ctx)? + x)?)?;
        Ok((out, keep_probs.then_some(probs)))
    }
}
