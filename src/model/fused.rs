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

/// `qkv` is `[batch * seq, 3 * hidden]` f32 (Q, K, V side by side, each head's columns
/// contiguous); `mask_bias` is `[batch, 1, 1, seq]` f32. Returns the context `[batch *
/// seq, hidden]` and, when `keep_probs`, the probabilities `[batch, heads, seq, seq]`.
pub fn attention(
    qkv: &Tensor,
    mask_bias: &Tensor,
    shape: Shape,
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
    let qkv = qkv.contiguous()?;
    with_cpu_f32(&qkv, "fused attention", |qkv| {
        run_heads(qkv, &bias, shape, keep_probs)
    })?
}

/// Every (sequence, head) as one parallel task; returns the context and the probabilities.
fn run_heads(
    qkv: &[f32],
    bias: &[f32],
    shape: Shape,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let Shape {
        batch,
        seq,
        heads,
        head_dim,
    } = shape;
    let hidden = shape.hidden();
    let mut ctx = vec![0f32; batch * seq * hidden];
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
        let rows = &qkv[b * seq * 3 * hidden..(b + 1) * seq * 3 * hidden];
        let mut scores = vec![0f32; seq * seq];
        let mut p = vec![0f32; seq * seq];
        one_head(
            rows,
            h * head_dim,
            shape,
            &bias[b * seq..(b + 1) * seq],
            &mut scores,
            &mut p,
        );
        if keep_probs {
            // SAFETY: block `task` of `seq * seq` floats belongs to this task alone.
            let out = unsafe {
                std::slice::from_raw_parts_mut(probs_ptr.get().add(task * seq * seq), seq * seq)
            };
            out.copy_from_slice(&p);
        }
        context(&p, rows, h * head_dim, shape, |r, cols, values| {
            // SAFETY: row `b * seq + r`, columns `h * head_dim + cols` are this task's
            // alone, and both stay inside `ctx`.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    ctx_ptr
                        .get()
                        .add((b * seq + r) * hidden + h * head_dim + cols.start),
                    cols.len(),
                )
            };
            out.copy_from_slice(values);
        });
    });
    let device = candle_core::Device::Cpu;
    let ctx = Tensor::from_vec(ctx, (batch * seq, hidden), &device)?;
    let probs = keep_probs
        .then(|| Tensor::from_vec(probs, (batch, heads, seq, seq), &device))
        .transpose()?;
    Ok((ctx, probs))
}

/// `p = softmax(q kᵀ + bias)` for one head of one sequence; `rows` is the sequence's
/// `[seq, 3 * hidden]` slice of qkv, `col` the head's first column within Q.
fn one_head(rows: &[f32], col: usize, shape: Shape, bias: &[f32], s: &mut [f32], p: &mut [f32]) {
    let (seq, d) = (shape.seq, shape.head_dim);
    let (stride, hidden) = (3 * shape.hidden(), shape.hidden());
    // Keys as GEMM panels: panel `j / NR` holds key j's features at `[c][j % NR]`.
    let panels = seq.div_ceil(NR);
    let mut keys = vec![0f32; panels * d * NR];
    for j in 0..seq {
        let key = &rows[j * stride + hidden + col..][..d];
        let panel = &mut keys[(j / NR) * d * NR..];
        for (c, &v) in key.iter().enumerate() {
            panel[c * NR + j % NR] = v;
        }
    }
    let mut acc = [[0f32; NR]; MR];
    for r0 in (0..seq).step_by(MR) {
        let mr = MR.min(seq - r0);
        for panel in 0..panels {
            let q = &rows[r0 * stride + col..];
            tile_product(
                q,
                stride,
                0..d,
                mr,
                &keys[panel * d * NR..],
                &mut acc,
                false,
            );
            let cols = panel * NR..((panel + 1) * NR).min(seq);
            for (i, acc) in acc.iter().take(mr).enumerate() {
                s[(r0 + i) * seq + cols.start..][..cols.len()].copy_from_slice(&acc[..cols.len()]);
            }
        }
    }
    for (p, s) in p.chunks_mut(seq).zip(s.chunks(seq)) {
        softmax_row(p, s, bias);
    }
}

/// `p v` for one head of one sequence, handed to `write(row, columns, values)` tile by
/// tile (columns relative to the head).
fn context(
    p: &[f32],
    rows: &[f32],
    col: usize,
    shape: Shape,
    mut write: impl FnMut(usize, std::ops::Range<usize>, &[f32]),
) {
    let (seq, d) = (shape.seq, shape.head_dim);
    let stride = 3 * shape.hidden();
    let value_col = 2 * shape.hidden() + col;
    // Values as GEMM panels: panel `c / NR` holds value feature c of key j at `[j][c % NR]`.
    let panels = d.div_ceil(NR);
    let mut values = vec![0f32; panels * seq * NR];
    for j in 0..seq {
        let value = &rows[j * stride + value_col..][..d];
        for (c, &v) in value.iter().enumerate() {
            values[(c / NR) * seq * NR + j * NR + c % NR] = v;
        }
    }
    let mut acc = [[0f32; NR]; MR];
    for r0 in (0..seq).step_by(MR) {
        let mr = MR.min(seq - r0);
        for panel in 0..panels {
            let x = &p[r0 * seq..];
            tile_product(
                x,
                seq,
                0..seq,
                mr,
                &values[panel * seq * NR..],
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
