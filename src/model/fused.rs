//! Multi-head attention on the CPU in one pass per (sequence, head), for f32 on AVX-512.
//!
//! The generic path splits the QKV projection into heads with a copy, runs one small
//! matmul per head for the scores and another for the context (each with its own thread
//! dispatch), and transposes the context back with another copy. Here every (sequence,
//! head) is one parallel task: it packs its keys and values for the GEMM kernel
//! (`sgemm::tile_product`), computes the scores, adds the padding bias, takes the softmax
//! with the same vectorised row function as the generic path, and writes its slice of
//! the context straight into the `[tokens, hidden]` layout the output projection reads.
//! The arithmetic is the same as the generic path's: Q's rows were already scaled by
//! 1/sqrt(head_dim) at load.

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::ops::{softmax_row, with_cpu_f32, SendPtr};
use super::sgemm::{tile_product, MR, NR};

/// Attention's shape: `batch` sequences of `seq` tokens, `heads` heads of `head_dim`.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Padded tokens per sequence.
    pub seq: usize,
    /// Attention heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl Shape {
    /// Features per token: all heads side by side.
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Which queries attention is computed for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Queries {
    /// Every token: the context is `[batch * seq, hidden]`.
    All,
    /// Each sequence's first token alone: the context is `[batch, hidden]`.
    First,
}

/// `qkv` is `[batch * seq, 3 * hidden]` f32 (Q, K, V side by side, each head's columns
/// contiguous); `mask_bias` is `[batch, 1, 1, seq]` f32. Returns the context for
/// `queries` and, when `keep_probs` (with `Queries::All` only), the probabilities
/// `[batch, heads, seq, seq]`.
///
/// Each sequence is cut at its last real token: trailing padding takes no part in any
/// sum, so a text gets the same bits whatever it was batched with (padded query rows
/// get a zero context; nothing reads them).
pub fn attention(
    qkv: &Tensor,
    mask_bias: &Tensor,
    shape: Shape,
    queries: Queries,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (batch, seq, hidden) = (shape.batch, shape.seq, shape.hidden());
    let bias = mask_bias.flatten_all()?.to_vec1::<f32>()?;
    if bias.len() != batch * seq || qkv.dims() != [batch * seq, 3 * hidden] {
        bail!(
            "fused attention: qkv {:?} and mask {:?} do not fit {batch} x {seq} tokens of {hidden}",
            qkv.dims(),
            mask_bias.dims()
        );
    }
    if keep_probs && queries == Queries::First {
        bail!("fused attention: probabilities are kept only for every query");
    }
    let qkv = qkv.contiguous()?;
    with_cpu_f32(&qkv, "fused attention", |qkv| {
        run_heads(qkv, &bias, shape, queries, keep_probs)
    })?
}

/// Tokens up to and including the last one the mask lets through.
fn real_length(bias: &[f32]) -> usize {
    bias.iter().rposition(|&b| b == 0.0).map_or(0, |i| i + 1)
}

/// Every (sequence, head) as one parallel task; returns the context and the probabilities.
fn run_heads(
    qkv: &[f32],
    bias: &[f32],
    shape: Shape,
    queries: Queries,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let Shape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    let hidden = shape.hidden();
    let out_rows = match queries {
        Queries::All => seq,
        Queries::First => 1,
    };
    let mut ctx = vec![0f32; batch * out_rows * hidden];
    let mut probs = vec![
        0f32;
        if keep_probs {
            batch * heads * seq * seq
        } else {
            0
        }
    ];
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    let probs_ptr = SendPtr(probs.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let bias = &bias[b * seq..(b + 1) * seq];
        let len = real_length(bias);
        let rows = &qkv[b * seq * 3 * hidden..(b + 1) * seq * 3 * hidden];
        let head = Head {
            rows,
            col: h * head_dim,
            len,
            queries: out_rows.min(len),
            shape,
        };
        if head.queries == 0 {
            return;
        }
        let mut p = vec![0f32; head.queries * len];
        head.probabilities(&bias[..len], &mut p);
        if keep_probs {
            for (r, p) in p.chunks(len).enumerate() {
                // SAFETY: block `task` of `seq * seq` floats belongs to this task alone,
                // and r < len <= seq.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        probs_ptr.get().add(task * seq * seq + r * seq),
                        len,
                    )
                };
                out.copy_from_slice(p);
            }
        }
        head.context(&p, |r, cols, values| {
            // SAFETY: row `b * out_rows + r` (r < out_rows), columns `h * head_dim +
            // cols` are this task's alone, and both stay inside `ctx`.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    ctx_ptr
                        .get()
                        .add((b * out_rows + r) * hidden + h * head_dim + cols.start),
                    cols.len(),
                )
            };
            out.copy_from_slice(values);
        });
    });
    let device = candle_core::Device::Cpu;
    let ctx = Tensor::from_vec(ctx, (batch * out_rows, hidden), &device)?;
    let probs = keep_probs
        .then(|| Tensor::from_vec(probs, (batch, heads, seq, seq), &device))
        .transpose()?;
    Ok((ctx, probs))
}

/// One head of one sequence, cut to its real tokens.
struct Head<'a> {
    /// The sequence's `[seq, 3 * hidden]` slice of qkv.
    rows: &'a [f32],
    /// The head's first column within Q.
    col: usize,
    /// Keys (and values) that take part: the real length.
    len: usize,
    /// Query rows computed, from the first.
    queries: usize,
    shape: Shape,
}

impl Head<'_> {
    /// `p = softmax(q kᵀ + bias)`, `[queries][len]`.
    fn probabilities(&self, bias: &[f32], p: &mut [f32]) {
        let (len, d) = (self.len, self.shape.head_dim);
        let (stride, hidden) = (3 * self.shape.hidden(), self.shape.hidden());
        // Keys as GEMM panels: panel `j / NR` holds key j's features at `[c][j % NR]`.
        let panels = len.div_ceil(NR);
        let mut keys = vec![0f32; panels * d * NR];
        for j in 0..len {
            let key = &self.rows[j * stride + hidden + self.col..][..d];
            let panel = &mut keys[(j / NR) * d * NR..];
            for (c, &v) in key.iter().enumerate() {
                panel[c * NR + j % NR] = v;
            }
        }
        let mut s = vec![0f32; self.queries * len];
        let mut acc = [[0f32; NR]; MR];
        for r0 in (0..self.queries).step_by(MR) {
            let mr = MR.min(self.queries - r0);
            for panel in 0..panels {
                let q = &self.rows[r0 * stride + self.col..];
                tile_product(
                    q,
                    stride,
                    0..d,
                    mr,
                    &keys[panel * d * NR..],
                    &mut acc,
                    false,
                );
                let cols = panel * NR..((panel + 1) * NR).min(len);
                for (i, acc) in acc.iter().take(mr).enumerate() {
                    s[(r0 + i) * len + cols.start..][..cols.len()]
                        .copy_from_slice(&acc[..cols.len()]);
                }
            }
        }
        for (p, s) in p.chunks_mut(len).zip(s.chunks(len)) {
            softmax_row(p, s, bias);
        }
    }

    /// `p v`, handed to `write(row, columns, values)` tile by tile (columns relative to
    /// the head).
    fn context(&self, p: &[f32], mut write: impl FnMut(usize, std::ops::Range<usize>, &[f32])) {
        let (len, d) = (self.len, self.shape.head_dim);
        let stride = 3 * self.shape.hidden();
        let value_col = 2 * self.shape.hidden() + self.col;
        // Values as GEMM panels: panel `c / NR` holds value feature c of key j at
        // `[j][c % NR]`.
        let panels = d.div_ceil(NR);
        let mut values = vec![0f32; panels * len * NR];
        for j in 0..len {
            let value = &self.rows[j * stride + value_col..][..d];
            for (panel, part) in value.chunks(NR).enumerate() {
                values[panel * len * NR + j * NR..][..part.len()].copy_from_slice(part);
            }
        }
        let mut acc = [[0f32; NR]; MR];
        for r0 in (0..self.queries).step_by(MR) {
            let mr = MR.min(self.queries - r0);
            for panel in 0..panels {
                tile_product(
                    &p[r0 * len..],
                    len,
                    0..len,
                    mr,
                    &values[panel * len * NR..],
                    &mut acc,
                    false,
                );
                let cols = panel * NR..((panel + 1) * NR).min(d);
                for (i, acc) in acc.iter().take(mr).enumerate() {
                    write(r0 + i, cols.clone(), &acc[..cols.len()]);
                }
            }
        }
    }
}
