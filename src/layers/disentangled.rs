//! DeBERTa's disentangled self-attention: each score is content-to-content (as in
//! BERT) plus content-to-position (`c2p`: a query against the key's relative position)
//! plus position-to-content (`p2c`: the query's relative position against a key), the
//! relative positions bucketed logarithmically beyond a span. All three share one
//! scale, `1 / sqrt(head_dim * (1 + c2p + p2c))`.
//!
//! The position terms project the (normalised) relative-position table, which does not
//! depend on the input: those projections are made once, at load. Scores run on candle's
//! ops on every backend (the Q/K/V projections on the backend's dense layers; the
//! softmax on the CPU kernel where the model is f32 on the CPU), except under
//! `--dtype bf16` on the CPU kernels, where the fused attention kernel adds the position
//! terms to each head's scores itself.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::attention::{separate_qkv, softmax_context};
use super::{Backend, Linear, Loader, Sequences};
use crate::kernels::cpu;

/// Relative-position settings of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct RelativePositions {
    /// Log buckets beyond this many positions each way (0: none).
    pub buckets: usize,
    /// Largest distance the buckets tell apart.
    pub max_distance: usize,
    /// Content-to-position scores.
    pub c2p: bool,
    /// Position-to-content scores.
    pub p2c: bool,
    /// The content projections also project the positions.
    pub share_keys: bool,
}

/// DeBERTa-v2's `DisentangledSelfAttention`.
pub struct DisentangledAttention {
    /// Q (scaled), K and V stacked, as in `SelfAttention`.
    qkv: Linear,
    /// `[1, heads, head_dim, 2 * span]`: the position keys (c2p), transposed for the
    /// product with the queries.
    position_keys: Option<Tensor>,
    /// `[1, heads, head_dim, 2 * span]`: the position queries (p2c), scaled.
    position_queries: Option<Tensor>,
    relative: Option<RelativePositions>,
    span: usize,
    heads: usize,
    cpu_softmax: bool,
    /// `--dtype bf16` on the CPU kernels: the position tables as the fused kernel reads
    /// them (`[heads][2 * span][head_dim]`), where the scores run in one task per
    /// (sequence, head) instead of candle's batched products (28% of a bf16 profile,
    /// more than the dense layers on AMX tiles).
    fused: Option<FusedTables>,
}

/// The position keys and queries, `[heads][2 * span][head_dim]` each (empty where the
/// term is off).
struct FusedTables {
    keys: Vec<f32>,
    queries: Vec<f32>,
}

impl DisentangledAttention {
    /// `vb` holds `query_proj`, `key_proj`, `value_proj` (and `pos_key_proj` /
    /// `pos_query_proj` unless keys are shared); `rel` is the encoder's relative-position
    /// table `[2 * span, hidden]`, already normalised, when relative attention is on.
    pub fn load(
        vb: &Loader,
        hidden: usize,
        heads: usize,
        rel: Option<(&Tensor, RelativePositions)>,
    ) -> Result<Self> {
        let h = hidden;
        let d = h / heads.max(1);
        let get = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
        };
        let (qw, qb) = get("query_proj")?;
        let (kw, kb) = get("key_proj")?;
        let (vw, vb_) = get("value_proj")?;
        let factor = 1 + rel.map_or(0, |(_, r)| r.c2p as usize + r.p2c as usize);
        let scale = 1.0 / ((d * factor) as f64).sqrt();
        // [2S, hidden] -> [1, heads, d, 2S]: ready to multiply queries or keys by.
        let project = |w: &Tensor, b: &Tensor, table: &Tensor| -> Result<Tensor> {
            let s2 = table.dim(0)?;
            Ok(table
                .matmul(&w.t()?)?
                .broadcast_add(b)?
                .reshape((s2, heads, d))?
                .permute((1, 2, 0))?
                .unsqueeze(0)?
                .contiguous()?)
        };
        let (mut position_keys, mut position_queries, mut span) = (None, None, 0);
        if let Some((table, r)) = rel {
            span = table.dim(0)? / 2;
            if r.c2p {
                position_keys = Some(if r.share_keys {
                    project(&kw, &kb, table)?
                } else {
                    let (w, b) = get("pos_key_proj")?;
                    project(&w, &b, table)?
                });
            }
            if r.p2c {
                let pq = if r.share_keys {
                    project(&qw, &qb, table)?
                } else {
                    let (w, b) = get("pos_query_proj")?;
                    project(&w, &b, table)?
                };
                position_queries = Some((pq * scale)?);
            }
        }
        let weight = Tensor::cat(&[(qw * scale)?, kw, vw], 0)?;
        let bias = Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?;
        let rows_of = |table: &Option<Tensor>| -> Result<Vec<f32>> {
            Ok(match table {
                // [1, heads, d, 2S] -> [heads, 2S, d]
                Some(t) => t
                    .squeeze(0)?
                    .transpose(1, 2)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1()?,
                None => Vec::new(),
            })
        };
        let fused = (vb.backend == Backend::Kernels && vb.bf16_dense)
            .then(|| -> Result<FusedTables> {
                Ok(FusedTables {
                    keys: rows_of(&position_keys)?,
                    queries: rows_of(&position_queries)?,
                })
            })
            .transpose()?;
        Ok(Self {
            fused,
            qkv: Linear::new(weight, bias, vb)?,
            position_keys,
            position_queries,
            relative: rel.map(|(_, r)| r),
            span,
            heads,
            cpu_softmax: vb.backend != Backend::Candle,
        })
    }

    /// The Q/K/V projection (one dense layer), for `--quantize q8` to calibrate and
    /// convert.
    pub fn projections_mut(&mut self) -> &mut Linear {
        &mut self.qkv
    }

    /// `x` is the padded batch `[batch, seq, hidden]`. Returns the context `[batch, seq,
    /// hidden]` and, when `keep_probs`, the probabilities `[batch, heads, seq, seq]`.
    pub fn forward(
        &self,
        x: &Tensor,
        seqs: &Sequences,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, h) = x.dims3()?;
        let (heads, d) = (self.heads, h / self.heads);
        if seqs.batch() != b {
            bail!(
                "disentangled attention needs the padded batch ({b} rows, {} sequences)",
                seqs.batch()
            );
        }
        if let (Some(fused), false) = (&self.fused, keep_probs) {
            if seqs.rows().bias.len() == b * t {
                return self.forward_fused(fused, x, seqs);
            }
        }
        let (q, k, v) = separate_qkv(&self.qkv.forward(x)?, heads, d)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some((c2p, p2c)) = self.table_rows(t) {
            // A text of t tokens reads only the table rows its distances reach (2t - 1
            // of DeBERTa-v3's 512 for t up to 128): the products run for those alone.
            let lo = c2p.iter().chain(&p2c).copied().min().unwrap_or(0);
            let hi = c2p.iter().chain(&p2c).copied().max().unwrap_or(0);
            let rows = (hi - lo + 1) as usize;
            let index = |idx: &[u32]| -> Result<Tensor> {
                let idx: Vec<u32> = idx.iter().map(|&p| p - lo).collect();
                Ok(Tensor::from_vec(idx, (1, 1, t, t), x.device())?
                    .broadcast_as((b, heads, t, t))?
                    .contiguous()?)
            };
            let used = |table: &Tensor| table.narrow(3, lo as usize, rows)?.contiguous();
            if let Some(pk) = &self.position_keys {
                // c2p[i][j] = q_i · pk[r(i, j)]
                let all = q.broadcast_matmul(&used(pk)?)?;
                scores = (scores + all.gather(&index(&c2p)?, 3)?)?;
            }
            if let Some(pq) = &self.position_queries {
                // p2c[i][j] = k_j · pq[-r(j, i)]
                let all = k.broadcast_matmul(&used(pq)?)?;
                scores = (scores + all.gather(&index(&p2c)?, 3)?.transpose(2, 3)?)?;
            }
        }
        let (ctx, probs) = softmax_context(scores, &seqs.mask_bias, &v, self.cpu_softmax)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, t, h))?;
        Ok((ctx, keep_probs.then_some(probs)))
    }

    /// The table rows a sequence of `t` tokens reads, `[t][t]` each, where relative
    /// attention is on: row n = i * t + j of `c2p` is position r(i, j), of `p2c` (per key
    /// j, read transposed) -r(j, i).
    fn table_rows(&self, t: usize) -> Option<(Vec<u32>, Vec<u32>)> {
        let rel = self.relative?;
        let positions = relative_positions(t, rel);
        let two_span = 2 * self.span as i64;
        let clamp = |p: i64| (p + self.span as i64).clamp(0, two_span - 1) as u32;
        let c2p = positions.iter().map(|&p| clamp(p)).collect();
        let p2c = positions.iter().map(|&p| clamp(-p)).collect();
        Some((c2p, p2c))
    }

    /// `forward` on the fused CPU kernel (`--dtype bf16`; no probabilities kept).
    fn forward_fused(
        &self,
        tables: &FusedTables,
        x: &Tensor,
        seqs: &Sequences,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, h) = x.dims3()?;
        let shape = cpu::Shape {
            heads: self.heads,
            head_dim: h / self.heads,
        };
        let qkv = self.qkv.forward(x)?.reshape((b * t, 3 * h))?;
        let (c2p, p2c) = self.table_rows(t).unwrap_or_default();
        let terms = cpu::PositionTerms {
            keys: &tables.keys,
            queries: &tables.queries,
            table_rows: 2 * self.span,
            seq: t,
            c2p: &c2p,
            p2c: &p2c,
        };
        let ctx = cpu::attention_with_positions(&qkv, seqs.rows(), shape, terms)?;
        Ok((ctx.reshape((b, t, h))?, None))
    }
}

/// `r(i, j)` for a sequence of `t` tokens, row-major: `i - j`, bucketed as
/// transformers' `make_log_bucket_position` does when buckets are set.
fn relative_positions(t: usize, rel: RelativePositions) -> Vec<i64> {
    (0..t * t)
        .map(|n| {
            let r = (n / t) as i64 - (n % t) as i64;
            if rel.buckets > 0 && rel.max_distance > 0 {
                log_bucket(r, rel.buckets as i64, rel.max_distance as i64)
            } else {
                r
            }
        })
        .collect()
}

/// Distances within half the bucket count stay as they are; beyond, they share
/// log-spaced buckets up to `max_position`. Computed in f32 as PyTorch does, so the
/// rounding up lands on the same bucket.
fn log_bucket(relative: i64, buckets: i64, max_position: i64) -> i64 {
    let mid = buckets / 2;
    let abs = if relative < mid && relative > -mid {
        mid - 1
    } else {
        relative.abs()
    };
    if abs <= mid {
        return relative;
    }
    let ratio = ((max_position - 1) as f64 / mid as f64) as f32;
    let log = ((abs as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil() + mid as f32;
    (log * relative.signum() as f32) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buckets_keep_near_distances_and_compress_far_ones() {
        // DeBERTa-v3-base: 256 buckets, 512 positions.
        let b = |r| log_bucket(r, 256, 512);
        assert_eq!((b(0), b(5), b(-127), b(128)), (0, 5, -127, 128));
        // Far distances compress (monotonically) into the buckets past 128.
        assert_eq!((b(129), b(-129)), (-b(-129), b(-129)));
        assert!(b(129) > 128 && b(511) <= 255 && b(511) >= b(300) && b(300) >= b(129));
        let rel = RelativePositions {
            buckets: 0,
            max_distance: 4,
            c2p: true,
            p2c: true,
            share_keys: true,
        };
        assert_eq!(relative_positions(2, rel), [0, -1, 1, 0]);
    }
}
