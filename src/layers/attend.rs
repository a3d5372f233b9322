//! Attention over queries, keys and values a model has already projected, for the
//! families whose attention is not BERT's: rotary positions (ModernBERT), a sliding
//! window (ModernBERT's local layers), a causal mask (BART's decoder), or keys from
//! another sequence (BART's cross-attention). Which keys a query sees is described
//! (`Visibility`), not passed as a `[seq, seq]` tensor: long inputs are then computed a
//! block of queries at a time, each against only the keys it can see, so memory stays
//! bounded and a local layer's cost grows linearly with the input.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::{Backend, Loader, Rotary};
use crate::kernels::cpu;

/// Padding bias added to scores: `exp` of it underflows to exactly 0, as PyTorch's
/// `finfo.min` mask does, and it stays finite when added to a score.
const MASK_BIAS: f32 = -1.0e9;

/// Scores held at once, above which queries are taken in blocks (64 MiB of f32).
const SCORES_AT_ONCE: usize = 16 << 20;

/// Which keys each query sees, beyond the padding mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Every key.
    All,
    /// Keys within `half` positions either side, inclusive (ModernBERT's local layers:
    /// `|i - j| <= local_attention / 2`).
    Window { half: usize },
    /// Keys at or before the query's position (a decoder).
    Causal,
}

impl Visibility {
    /// The keys query `i` of `tk` may see, as a range.
    fn keys(self, i: usize, tk: usize) -> std::ops::Range<usize> {
        match self {
            Self::All => 0..tk,
            Self::Window { half } => i.saturating_sub(half)..(i + half + 1).min(tk),
            Self::Causal => 0..(i + 1).min(tk),
        }
    }
}

/// `[batch, seq]` mask (1 for real tokens) -> the `[batch, 1, 1, seq]` f32 bias attention
/// adds to its scores: 0 for real tokens, a large negative number for padding.
pub fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    Ok(((mask.to_dtype(DType::F32)? - 1.0)? * -(MASK_BIAS as f64))?.reshape((b, 1, 1, t))?)
}

/// Multi-head scaled dot-product attention on projected inputs.
pub struct Attend {
    heads: usize,
    head_dim: usize,
    scale: f64,
    /// Softmax on the CPU kernel (f32 on the CPU).
    cpu_softmax: bool,
}

impl Attend {
    /// `hidden` features split into `heads`, scores scaled by `head_dim^-0.5`, on `ld`'s
    /// backend.
    pub fn new(hidden: usize, heads: usize, ld: &Loader) -> Self {
        let head_dim = hidden / heads.max(1);
        Self {
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            cpu_softmax: !matches!(ld.backend, Backend::Candle),
        }
    }

    /// Self-attention on `qkv`, `[batch, seq, 3 * hidden]` (Q, K, V side by side),
    /// rotary positions on Q and K when given. Returns the context `[batch, seq, hidden]`
    /// and, when `keep_probs`, the probabilities `[batch, heads, seq, seq]` (f32).
    pub fn stacked(
        &self,
        qkv: &Tensor,
        padding: &Tensor,
        visible: Visibility,
        rotary: Option<&Rotary>,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = qkv.dims3()?;
        let qkv = qkv
            .reshape((b, t, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        if let Some(r) = rotary {
            q = r.apply(&q)?;
            k = r.apply(&k)?;
        }
        self.heads_attend(&q, &k, &v, padding, visible, keep_probs, SCORES_AT_ONCE)
    }

    /// Attention of `q` (`[batch, tq, hidden]`) over `kv` (`[batch, tk, 2 * hidden]`,
    /// K and V side by side), keys masked by `padding` (`[batch, 1, 1, tk]`).
    pub fn cross(
        &self,
        q: &Tensor,
        kv: &Tensor,
        padding: &Tensor,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, tq, _) = q.dims3()?;
        let tk = kv.dim(1)?;
        let q = q
            .reshape((b, tq, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let kv = kv
            .reshape((b, tk, 2, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (k, v) = (kv.get(0)?, kv.get(1)?);
        self.heads_attend(
            &q,
            &k,
            &v,
            padding,
            Visibility::All,
            keep_probs,
            SCORES_AT_ONCE,
        )
    }

    /// `q` `[b, heads, tq, d]`, `k` and `v` `[b, heads, tk, d]`: the context `[b, tq,
    /// heads * d]` and the probabilities when asked. Queries go in blocks small enough
    /// that their scores stay under `budget` values, each block against the keys any of
    /// its queries sees.
    #[allow(clippy::too_many_arguments)]
    fn heads_attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        padding: &Tensor,
        visible: Visibility,
        keep_probs: bool,
        budget: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, heads, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        let per_query = (b * heads * tk).max(1);
        let block = if keep_probs {
            tq.max(1)
        } else {
            (budget / per_query).clamp(16, tq.max(16))
        };
        let mut contexts = Vec::with_capacity(tq.div_ceil(block));
        let mut probs = None;
        for start in (0..tq).step_by(block) {
            let n = block.min(tq - start);
            let first = visible.keys(start, tk).start;
            let end = visible.keys(start + n - 1, tk).end.max(first);
            // Contiguous: candle's batched matmul misreads a narrowed operand's batch stride.
            let k = k.narrow(2, first, end - first)?.contiguous()?;
            let v = v.narrow(2, first, end - first)?.contiguous()?;
            let q = q.narrow(2, start, n)?.contiguous()?;
            let bias = block_bias(padding, visible, start..start + n, first..end, tk)?;
            let scores = (q.matmul(&k.t()?)? * self.scale)?.to_dtype(DType::F32)?;
            let p = if self.cpu_softmax {
                let scores = scores.contiguous()?;
                match &bias {
                    Bias::Keys(bias) => cpu::masked_softmax(&scores, &bias.contiguous()?)?,
                    Bias::Full(bias) => {
                        candle_nn::ops::softmax_last_dim(&scores.broadcast_add(bias)?)?
                    }
                }
            } else {
                let bias = match &bias {
                    Bias::Keys(bias) | Bias::Full(bias) => bias,
                };
                candle_nn::ops::softmax_last_dim(&scores.broadcast_add(bias)?)?
            };
            contexts.push(p.to_dtype(v.dtype())?.matmul(&v)?);
            if keep_probs {
                // One block (keep_probs takes every query at once) over every key.
                probs = Some(p);
            }
        }
        let ctx = Tensor::cat(&contexts, 2)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, tq, ()))?;
        Ok((ctx, probs))
    }
}

/// The bias of `queries` over `keys` (of `tk`): the keys' padding alone where every
/// one of those queries sees every one of those keys, else padding plus the structure.
fn block_bias(
    padding: &Tensor,
    visible: Visibility,
    queries: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    tk: usize,
) -> Result<Bias> {
    let padding = padding.narrow(3, keys.start, keys.len())?;
    let all_seen = queries.clone().all(|i| {
        let seen = visible.keys(i, tk);
        seen.start <= keys.start && seen.end >= keys.end
    });
    if all_seen {
        return Ok(Bias::Keys(padding));
    }
    let mut structure = vec![0f32; queries.len() * keys.len()];
    for (i, row) in queries.clone().zip(structure.chunks_mut(keys.len().max(1))) {
        let seen = visible.keys(i, tk);
        for (j, cell) in keys.clone().zip(row.iter_mut()) {
            if !seen.contains(&j) {
                *cell = MASK_BIAS;
            }
        }
    }
    let structure = Tensor::from_vec(
        structure,
        (1, 1, queries.len(), keys.len()),
        padding.device(),
    )?;
    Ok(Bias::Full(padding.broadcast_add(&structure)?))
}

/// A block's bias: the keys' padding alone (`[b, 1, 1, k]`), or padding and structure
/// (`[b, 1, q, k]`).
enum Bias {
    Keys(Tensor),
    Full(Tensor),
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Queries in blocks of 16, each against only the keys it sees, give what one block
    /// over every key with the full mask gives, for every kind of visibility and every
    /// real query.
    #[test]
    fn blocks_match_one_pass() -> Result<()> {
        let dev = Device::Cpu;
        let (b, heads, t, d) = (2, 3, 100, 8);
        let draw = |seed: u64| -> Result<Tensor> {
            let mut x = seed;
            let v: Vec<f32> = (0..b * heads * t * d)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect();
            Ok(Tensor::from_vec(v, (b, heads, t, d), &dev)?)
        };
        let (q, k, v) = (draw(1)?, draw(2)?, draw(3)?);
        // The second sequence is 70 tokens long.
        let mask: Vec<u32> = (0..b * t).map(|i| u32::from(i < t || i % t < 70)).collect();
        let padding = padding_bias(&Tensor::from_vec(mask, (b, t), &dev)?)?;
        for cpu_softmax in [false, true] {
            let attend = Attend {
                heads,
                head_dim: d,
                scale: 1.0 / (d as f64).sqrt(),
                cpu_softmax,
            };
            for visible in [
                Visibility::All,
                Visibility::Window { half: 8 },
                Visibility::Causal,
            ] {
                let (whole, probs) =
                    attend.heads_attend(&q, &k, &v, &padding, visible, true, usize::MAX)?;
                let (blocks, _) = attend.heads_attend(&q, &k, &v, &padding, visible, false, 1)?;
                // Real queries only: a padding query past the window sees nothing but
                // padding, and nothing reads its row.
                let real = |x: &Tensor| -> Result<Tensor> {
                    Ok(Tensor::cat(&[x.get(0)?, x.get(1)?.narrow(0, 0, 70)?], 0)?)
                };
                let diff = (real(&whole)? - real(&blocks)?)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{visible:?}: blocks differ by {diff}");
                // What a query may not see gets no weight: query 50 against key 70.
                let p = probs.unwrap().get(0)?.get(0)?.get(50)?.to_vec1::<f32>()?;
                let expect_seen =
                    !matches!(visible, Visibility::Window { .. } | Visibility::Causal);
                assert_eq!(p[70] > 0.0, expect_seen, "{visible:?}");
            }
        }
        Ok(())
    }
}
