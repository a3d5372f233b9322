//! Multi-head attention on the CPU in one pass per (sequence, head), f32.
//!
//! candle's path splits the QKV projection into heads with a copy, runs one small
//! matmul per head for the scores and another for the context (each with its own thread
//! dispatch), and transposes the context back with another copy. Here every (sequence,
//! head) is one parallel task: it packs its keys and values for the GEMM kernel
//! (`microkernel::tile_product`), computes the scores, adds the padding bias, takes the softmax
//! with the same vectorised row function as the candle path, and writes its slice of
//! the context straight into the `[tokens, hidden]` layout the output projection reads.
//! The arithmetic is the same as the candle path's: Q's rows were already scaled by
//! 1/sqrt(head_dim) at load.

use candle_core::{bail, Result, Tensor};

use super::elementwise::softmax_row;
use super::microkernel::{row_tiles, tile_product, MR, NR};
use super::par::{par_tasks, Disjoint};
use super::tensor;

/// Attention's heads: `heads` of `head_dim` features each.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Attention heads.
    pub heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl Shape {
    /// Features per token: all heads side by side.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Where each sequence's tokens are among the rows of the hidden states: `batch * seq`
/// rows of a padded batch, or each text's real tokens back to back (the layers decide).
#[derive(Clone, Copy)]
pub struct SeqRows<'a> {
    /// The first row of each sequence, then the number of rows: `batch + 1` entries.
    pub starts: &'a [usize],
    /// Per row: 0 for a real token, a large negative number for padding.
    pub bias: &'a [f32],
}

impl SeqRows<'_> {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// The rows of sequence `b`.
    pub fn rows(&self, b: usize) -> std::ops::Range<usize> {
        self.starts[b]..self.starts[b + 1]
    }
}

/// Which queries attention is computed for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Queries {
    /// Every token: the context has a row for every row of `qkv`.
    All,
    /// Each sequence's first token alone: the context is `[batch, hidden]`.
    First,
}

/// `qkv` is `[rows, 3 * hidden]` f32 (Q, K, V side by side, each head's columns
/// contiguous), its rows grouped into sequences by `seqs`. Returns the context for
/// `queries` and, when `keep_probs` (with `Queries::All` and sequences of one length
/// only), the probabilities `[batch, heads, seq, seq]`.
///
/// Each sequence is cut at its last real token: trailing padding takes no part in any
/// sum, so a text gets the same bits whatever it was batched with (padded query rows
/// get a zero context; nothing reads them).
pub fn attention(
    qkv: &Tensor,
    seqs: SeqRows,
    shape: Shape,
    queries: Queries,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let hidden = shape.hidden();
    let rows = seqs.starts.last().copied().unwrap_or(0);
    if seqs.bias.len() != rows || qkv.dims() != [rows, 3 * hidden] {
        bail!(
            "fused attention: qkv {:?} and a mask of {} rows do not fit {rows} tokens of {hidden}",
            qkv.dims(),
            seqs.bias.len()
        );
    }
    if keep_probs && queries == Queries::First {
        bail!("fused attention: probabilities are kept only for every query");
    }
    let qkv = qkv.contiguous()?;
    tensor::read(&qkv, "fused attention", |qkv| {
        run_heads(qkv, seqs, shape, queries, keep_probs)
    })?
}

/// DeBERTa's relative-position terms, added to each head's scores before the softmax:
/// `q_i · pk[c2p(i, j)]` (content to position) and `k_j · pq[p2c(j, i)]` (position to
/// content), with the tables already projected (and `pq` scaled) at load.
#[derive(Clone, Copy)]
pub struct PositionTerms<'a> {
    /// `[heads][table_rows][head_dim]`: position keys, or empty (no c2p term).
    pub keys: &'a [f32],
    /// `[heads][table_rows][head_dim]`: position queries, or empty (no p2c term).
    pub queries: &'a [f32],
    /// Rows of each head's table.
    pub table_rows: usize,
    /// The padded length `t` every sequence of the batch has.
    pub seq: usize,
    /// `[t][t]`: the table row of `(query i, key j)` for c2p, at `i * t + j` (empty where
    /// `keys` is).
    pub c2p: &'a [u32],
    /// `[t][t]`: the table row of `(key j, query i)` for p2c, at `j * t + i` (empty where
    /// `queries` is).
    pub p2c: &'a [u32],
}

/// `attention` for every query of a padded batch (`Queries::All`, no probabilities kept),
/// with DeBERTa's position terms added to the scores. Its sums run in another order than
/// candle's batched products, so it serves `--dtype bf16` (whose dense layers round far
/// more), not f32, whose answers stay as they were.
pub fn attention_with_positions(
    qkv: &Tensor,
    seqs: SeqRows,
    shape: Shape,
    terms: PositionTerms,
) -> Result<Tensor> {
    let (hidden, d, t) = (shape.hidden(), shape.head_dim, terms.seq);
    let rows = seqs.starts.last().copied().unwrap_or(0);
    let table = shape.heads * terms.table_rows * d;
    let tables_fit = [terms.keys, terms.queries]
        .iter()
        .all(|tab| tab.is_empty() || tab.len() == table);
    // Each term's indices are read only where its table is there.
    let fits = |tab: &[f32], idx: &[u32]| {
        tab.is_empty()
            || (idx.len() == t * t && idx.iter().all(|&r| (r as usize) < terms.table_rows))
    };
    if seqs.bias.len() != rows
        || qkv.dims() != [rows, 3 * hidden]
        || (0..seqs.batch()).any(|b| seqs.rows(b).len() != t)
        || !tables_fit
        || !fits(terms.keys, terms.c2p)
        || !fits(terms.queries, terms.p2c)
    {
        bail!(
            "fused disentangled attention: qkv {:?}, {} mask rows, tables of {} and {} \
             floats and {} indices do not fit {rows} tokens of {hidden} in sequences of {t}",
            qkv.dims(),
            seqs.bias.len(),
            terms.keys.len(),
            terms.queries.len(),
            terms.c2p.len()
        );
    }
    let qkv = qkv.contiguous()?;
    let (ctx, _) = tensor::read(&qkv, "fused disentangled attention", |qkv| {
        run_heads_with(qkv, seqs, shape, Queries::All, false, Some(terms))
    })??;
    Ok(ctx)
}

dispatch_simd!(
    add_position_terms,
    |s: &mut [f32], head: &Head, h: usize, terms: &PositionTerms| {
        // s is `[queries][len]`; the tables' rows for head `h` are `d` floats each.
        let (len, d, t) = (head.len, head.shape.head_dim, terms.seq);
        let (stride, hidden) = (3 * head.shape.hidden(), head.shape.hidden());
        let at = |r: u32| (h * terms.table_rows + r as usize) * d;
        // Sixteen running sums, so that the loop runs a vector wide (one chain of FMAs
        // would wait on each one's latency).
        let dot = |a: &[f32], b: &[f32]| {
            let mut acc = [0f32; 16];
            let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
            let tail = ca.remainder().iter().zip(cb.remainder());
            for (ca, cb) in ca.zip(cb) {
                for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
                    *s = x.mul_add(*y, *s);
                }
            }
            tail.fold(acc.iter().sum::<f32>(), |s, (x, y)| x.mul_add(*y, s))
        };
        for (i, row) in s.chunks_mut(len).enumerate().take(head.queries) {
            let q = &head.rows[i * stride + head.col..][..d];
            for (j, score) in row.iter_mut().enumerate() {
                let k = &head.rows[j * stride + hidden + head.col..][..d];
                if !terms.keys.is_empty() {
                    *score += dot(q, &terms.keys[at(terms.c2p[i * t + j])..][..d]);
                }
                if !terms.queries.is_empty() {
                    *score += dot(k, &terms.queries[at(terms.p2c[j * t + i])..][..d]);
                }
            }
        }
    }
);

/// Tokens up to and including the last one the mask lets through.
pub fn real_length(bias: &[f32]) -> usize {
    bias.iter().rposition(|&b| b == 0.0).map_or(0, |i| i + 1)
}

/// Every (sequence, head) as one parallel task; returns the context and the probabilities.
fn run_heads(
    qkv: &[f32],
    seqs: SeqRows,
    shape: Shape,
    queries: Queries,
    keep_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    run_heads_with(qkv, seqs, shape, queries, keep_probs, None)
}

/// `run_heads`, with `terms` added to the scores where given.
fn run_heads_with(
    qkv: &[f32],
    seqs: SeqRows,
    shape: Shape,
    queries: Queries,
    keep_probs: bool,
    terms: Option<PositionTerms>,
) -> Result<(Tensor, Option<Tensor>)> {
    let Shape { heads, head_dim } = shape;
    let (hidden, batch) = (shape.hidden(), seqs.batch());
    let out_rows = match queries {
        Queries::All => seqs.starts.last().copied().unwrap_or(0),
        Queries::First => batch,
    };
    // Probabilities come as `[batch, heads, seq, seq]`: only for a padded batch.
    let seq = if batch == 0 { 0 } else { seqs.rows(0).len() };
    if keep_probs && (0..batch).any(|b| seqs.rows(b).len() != seq) {
        bail!("fused attention: probabilities need sequences of one length");
    }
    let mut ctx = vec![0f32; out_rows * hidden];
    let mut probs = vec![
        0f32;
        if keep_probs {
            batch * heads * seq * seq
        } else {
            0
        }
    ];
    let ctx_out = Disjoint::new(&mut ctx);
    let probs_out = Disjoint::new(&mut probs);
    par_tasks(batch * heads, |task| {
        let (b, h) = (task / heads, task % heads);
        let rows = seqs.rows(b);
        let bias = &seqs.bias[rows.clone()];
        let len = real_length(bias);
        let (first_out, queries) = match queries {
            Queries::All => (rows.start, len),
            Queries::First => (b, len.min(1)),
        };
        let head = Head {
            rows: &qkv[rows.start * 3 * hidden..rows.end * 3 * hidden],
            col: h * head_dim,
            len,
            queries,
            shape,
        };
        if head.queries == 0 {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch {
                p,
                keys,
                scores,
                values,
            } = scratch;
            let p = sized(p, head.queries * len);
            head.probabilities(
                &bias[..len],
                p,
                keys,
                scores,
                terms.as_ref().map(|t| (h, t)),
            );
            if keep_probs {
                for (r, p) in p.chunks(len).enumerate() {
                    // SAFETY: block `task` of `seq * seq` floats belongs to this task alone,
                    // and r < len <= seq.
                    let out = unsafe { probs_out.part(task * seq * seq + r * seq, len) };
                    out.copy_from_slice(p);
                }
            }
            head.context(p, values, |r, cols, values| {
                // SAFETY: output row `first_out + r` (one of this sequence's, r < queries),
                // columns `h * head_dim + cols` are this task's alone.
                let out = unsafe {
                    ctx_out.part(
                        (first_out + r) * hidden + h * head_dim + cols.start,
                        cols.len(),
                    )
                };
                out.copy_from_slice(values);
            });
        });
    });
    let ctx = tensor::from_vec(ctx, (out_rows, hidden))?;
    let probs = keep_probs
        .then(|| tensor::from_vec(probs, (batch, heads, seq, seq)))
        .transpose()?;
    Ok((ctx, probs))
}

/// A worker's buffers for one (sequence, head) task, kept between tasks: allocating and
/// zeroing them per task made MiniLM on 2,000 review snippets 2.5% slower (5.92 vs
/// 6.07 s, fastest of 5).
#[derive(Default)]
struct Scratch {
    /// Probabilities, `[queries][len]`.
    p: Vec<f32>,
    /// Keys packed as GEMM panels.
    keys: Vec<f32>,
    /// Scores before the softmax.
    scores: Vec<f32>,
    /// Values packed as GEMM panels.
    values: Vec<f32>,
}

thread_local! {
    /// Each pool worker's `Scratch` (a task runs start to end on one worker and calls
    /// nothing that could start another task on it).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The first `n` values of `buf`, grown if needed; whatever they held before stays.
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
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
    /// `p = softmax(q kᵀ + bias)`, `[queries][len]`, with head `h`'s position terms
    /// added to the scores where given.
    fn probabilities(
        &self,
        bias: &[f32],
        p: &mut [f32],
        keys: &mut Vec<f32>,
        scores: &mut Vec<f32>,
        terms: Option<(usize, &PositionTerms)>,
    ) {
        let (len, d) = (self.len, self.shape.head_dim);
        let (stride, hidden) = (3 * self.shape.hidden(), self.shape.hidden());
        // Keys as GEMM panels: panel `j / NR` holds key j's features at `[c][j % NR]`.
        let panels = len.div_ceil(NR);
        // Lanes past the last key hold stale values; the scores they give are dropped.
        let keys = sized(keys, panels * d * NR);
        for j in 0..len {
            let key = &self.rows[j * stride + hidden + self.col..][..d];
            let panel = &mut keys[(j / NR) * d * NR..];
            for (c, &v) in key.iter().enumerate() {
                panel[c * NR + j % NR] = v;
            }
        }
        let s = sized(scores, self.queries * len);
        let mut acc = [[0f32; NR]; MR];
        for (r0, mr) in row_tiles(0..self.queries) {
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
                    &[],
                );
                let cols = panel * NR..((panel + 1) * NR).min(len);
                for (i, acc) in acc.iter().take(mr).enumerate() {
                    s[(r0 + i) * len + cols.start..][..cols.len()]
                        .copy_from_slice(&acc[..cols.len()]);
                }
            }
        }
        if let Some((h, terms)) = terms {
            add_position_terms(s, self, h, terms);
        }
        for (p, s) in p.chunks_mut(len).zip(s.chunks(len)) {
            softmax_row(p, s, bias);
        }
    }

    /// `p v`, handed to `write(row, columns, values)` tile by tile (columns relative to
    /// the head).
    fn context(
        &self,
        p: &[f32],
        values: &mut Vec<f32>,
        mut write: impl FnMut(usize, std::ops::Range<usize>, &[f32]),
    ) {
        let (len, d) = (self.len, self.shape.head_dim);
        let stride = 3 * self.shape.hidden();
        let value_col = 2 * self.shape.hidden() + self.col;
        // Values as GEMM panels: panel `c / NR` holds value feature c of key j at
        // `[j][c % NR]`.
        let panels = d.div_ceil(NR);
        // Columns past the head's last feature hold stale values; their sums are dropped.
        let values = sized(values, panels * len * NR);
        for j in 0..len {
            let value = &self.rows[j * stride + value_col..][..d];
            for (panel, part) in value.chunks(NR).enumerate() {
                values[panel * len * NR + j * NR..][..part.len()].copy_from_slice(part);
            }
        }
        let mut acc = [[0f32; NR]; MR];
        for (r0, mr) in row_tiles(0..self.queries) {
            for panel in 0..panels {
                tile_product(
                    &p[r0 * len..],
                    len,
                    0..len,
                    mr,
                    &values[panel * len * NR..],
                    &mut acc,
                    false,
                    &[],
                );
                let cols = panel * NR..((panel + 1) * NR).min(d);
                for (i, acc) in acc.iter().take(mr).enumerate() {
                    write(r0 + i, cols.clone(), &acc[..cols.len()]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused kernel with DeBERTa's position terms against the definition in f64:
    /// scores `q·k + q·pk[c2p] + k·pq[p2c]`, padding masked, softmax, weighted values;
    /// padded query rows come back zero.
    #[test]
    fn position_terms_match_the_definition() -> Result<()> {
        let (heads, d, t, table_rows) = (3, 20, 7, 9);
        let hidden = heads * d;
        let lens = [7, 4, 1];
        let batch = lens.len();
        let mut rand = super::super::test_values(0x0dd_ba11);
        let qkv: Vec<f32> = (0..batch * t * 3 * hidden).map(|_| rand()).collect();
        let keys: Vec<f32> = (0..heads * table_rows * d).map(|_| rand()).collect();
        let queries: Vec<f32> = (0..heads * table_rows * d).map(|_| rand()).collect();
        let c2p: Vec<u32> = (0..t * t)
            .map(|n| ((n * 5 + 3) % table_rows) as u32)
            .collect();
        let p2c: Vec<u32> = (0..t * t)
            .map(|n| ((n * 7 + 1) % table_rows) as u32)
            .collect();
        let starts: Vec<usize> = (0..=batch).map(|b| b * t).collect();
        let bias: Vec<f32> = lens
            .iter()
            .flat_map(|&len| (0..t).map(move |i| if i < len { 0.0 } else { -1e9 }))
            .collect();
        let shape = Shape { heads, head_dim: d };
        let terms = PositionTerms {
            keys: &keys,
            queries: &queries,
            table_rows,
            seq: t,
            c2p: &c2p,
            p2c: &p2c,
        };
        let seqs = SeqRows {
            starts: &starts,
            bias: &bias,
        };
        let x = tensor::from_vec(qkv.clone(), (batch * t, 3 * hidden))?;
        let ctx = attention_with_positions(&x, seqs, shape, terms)?.to_vec2::<f32>()?;
        let at = |row: usize, col: usize| f64::from(qkv[row * 3 * hidden + col]);
        for (b, &len) in lens.iter().enumerate() {
            for h in 0..heads {
                let table = |tab: &[f32], r: u32, c: usize| {
                    f64::from(tab[(h * table_rows + r as usize) * d + c])
                };
                for i in 0..t {
                    let row = b * t + i;
                    let got = &ctx[row][h * d..(h + 1) * d];
                    if i >= len {
                        assert!(got.iter().all(|&v| v == 0.0), "padded row {row}");
                        continue;
                    }
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..d)
                                .map(|c| {
                                    let (q, k) =
                                        (at(row, h * d + c), at(b * t + j, hidden + h * d + c));
                                    q * k
                                        + q * table(&keys, c2p[i * t + j], c)
                                        + k * table(&queries, p2c[j * t + i], c)
                                })
                                .sum()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (c, &g) in got.iter().enumerate() {
                        let want: f64 = (0..len)
                            .map(|j| e[j] / sum * at(b * t + j, 2 * hidden + h * d + c))
                            .sum();
                        assert!(
                            (f64::from(g) - want).abs() < 1e-5,
                            "seq {b} head {h} row {i} col {c}: {g} vs {want}"
                        );
                    }
                }
            }
        }
        // An index past the tables is refused, not read.
        let bad: Vec<u32> = vec![table_rows as u32; t * t];
        let err = attention_with_positions(&x, seqs, shape, PositionTerms { c2p: &bad, ..terms });
        assert!(err.is_err());
        Ok(())
    }
}
