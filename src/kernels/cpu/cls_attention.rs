//! The last layer's attention when only `[CLS]` is read, with the keys and values folded
//! into the query (CPU, f32).
//!
//! Head j's score for token t is `q·(Wk x_t + bk) = (Wkᵀ q)·x_t + q·bk`, and its context
//! is `Σ_t p_t (Wv x_t + bv) = Wv (Σ_t p_t x_t) + bv`, since the p_t sum to 1. So rather
//! than projecting every token to a key and a value (`2·tokens·hidden²` per sequence),
//! each head turns its one query into a hidden-sized vector `u = Wkᵀ q`, scores the
//! tokens' hidden states against it, sums them weighted by their probabilities, and
//! projects that one sum through Wv: `2·hidden² + 2·heads·tokens·hidden` multiply-adds,
//! about an eighteenth as many for bert-base on 25 tokens. `q·bk` is the same for every
//! token, and softmax ignores a constant. The products over the batch (`u` for every sequence, then the
//! projected sums) run on the packed GEMM kernel. The sums go in another order than the
//! token-by-token path's, a difference far inside the parity tolerance.

use candle_core::{bail, Result, Tensor};

use super::attention::{real_length, SeqRows, Shape};
use super::elementwise::softmax_row;
use super::gemm::PackedLinear;
use super::microkernel::NR;
use super::par::{par_tasks, Disjoint};
use super::tensor;

/// One layer's key and value weights, per head, in the folded form.
pub struct ClsAttention {
    /// Per head: `[hidden, head_dim]` (out x in), the head's rows of Wk transposed, so
    /// that the layer maps the head's query to `u = Wkᵀ q`. No bias: `q·bk` drops out.
    keys: Vec<PackedLinear>,
    /// Per head: the head's rows of Wv, `[head_dim, hidden]`, and of bv.
    values: Vec<PackedLinear>,
    shape: Shape,
}

impl ClsAttention {
    /// Whether heads of `shape` can be folded: the queries come from the first panels of
    /// a stacked Q/K/V weight, so the hidden size must be whole panels.
    pub fn fits(shape: Shape) -> bool {
        shape.hidden().is_multiple_of(NR)
    }

    /// From the checkpoint's `key.weight` and `value.weight` (`[hidden, hidden]`, out x
    /// in) and `value.bias`.
    pub fn new(key: &Tensor, value: &Tensor, value_bias: &Tensor, shape: Shape) -> Result<Self> {
        let (h, d) = (shape.hidden(), shape.head_dim);
        let zeros = Tensor::zeros(h, key.dtype(), key.device())?;
        let mut keys = Vec::with_capacity(shape.heads);
        let mut values = Vec::with_capacity(shape.heads);
        for head in 0..shape.heads {
            let rows = key.narrow(0, head * d, d)?.t()?.contiguous()?;
            keys.push(PackedLinear::new(&rows, &zeros)?);
            values.push(PackedLinear::new(
                &value.narrow(0, head * d, d)?.contiguous()?,
                &value_bias.narrow(0, head * d, d)?,
            )?);
        }
        Ok(Self {
            keys,
            values,
            shape,
        })
    }

    /// `x` is `[rows, hidden]` (the layer's input, rows grouped into sequences by
    /// `seqs`), `queries` `[batch, hidden]`: each sequence's first-token query, already
    /// scaled by 1/sqrt(head_dim). Returns the context `[batch, hidden]`; a sequence the
    /// mask hides entirely gets zeros, as on the token-by-token path.
    pub fn forward(&self, x: &Tensor, queries: &Tensor, seqs: SeqRows) -> Result<Tensor> {
        let (h, batch) = (self.shape.hidden(), seqs.batch());
        let rows = seqs.starts.last().copied().unwrap_or(0);
        if x.dims() != [rows, h] || queries.dims() != [batch, h] || seqs.bias.len() != rows {
            bail!(
                "[CLS] attention: hidden states {:?} and queries {:?} do not fit {batch} \
                 sequences of {rows} tokens of {h}",
                x.dims(),
                queries.dims()
            );
        }
        let (x, queries) = (x.contiguous()?, queries.contiguous()?);
        tensor::read(&x, "[CLS] attention", |x| {
            tensor::read(&queries, "[CLS] attention queries", |q| {
                self.run(x, q, seqs)
            })
        })??
    }

    /// `forward` on the data.
    fn run(&self, x: &[f32], q: &[f32], seqs: SeqRows) -> Result<Tensor> {
        let Shape { heads, head_dim: d } = self.shape;
        let (h, batch) = (self.shape.hidden(), seqs.batch());
        // `u` and the weighted sums are `[heads][batch][hidden]`: one matrix per head for
        // the products.
        let mut u = vec![0f32; heads * batch * h];
        let mut head_q = vec![0f32; batch * d];
        for (head, u) in u.chunks_mut(batch * h.max(1)).enumerate() {
            for (dst, src) in head_q.chunks_mut(d).zip(q.chunks(h)) {
                dst.copy_from_slice(&src[head * d..(head + 1) * d]);
            }
            self.keys[head].product_into(&head_q, batch, u, h);
        }
        let lens: Vec<usize> = (0..batch)
            .map(|s| real_length(&seqs.bias[seqs.rows(s)]))
            .collect();
        let mut sums = vec![0f32; heads * batch * h];
        let sums_out = Disjoint::new(&mut sums);
        let (u, lens) = (&u, &lens);
        par_tasks(batch, |s| {
            let (rows, len) = (seqs.rows(s), lens[s]);
            let tokens = &x[rows.start * h..(rows.start + len) * h];
            let bias = &seqs.bias[rows.start..rows.start + len];
            let mut scores = vec![0f32; len];
            let mut p = vec![0f32; len];
            for head in 0..heads {
                let u = &u[(head * batch + s) * h..][..h];
                for (score, token) in scores.iter_mut().zip(tokens.chunks_exact(h)) {
                    *score = dot(token, u);
                }
                softmax_row(&mut p, &scores, bias);
                // SAFETY: row (head, s) of `sums` belongs to task s alone and lies
                // inside it (head < heads, s < batch).
                let sum = unsafe { sums_out.part((head * batch + s) * h, h) };
                for (&p, token) in p.iter().zip(tokens.chunks_exact(h)) {
                    add_scaled(sum, p, token);
                }
            }
        });
        let mut ctx = vec![0f32; batch * h];
        for (head, sums) in sums.chunks(batch * h.max(1)).enumerate() {
            self.values[head].product_into(sums, batch, &mut ctx[head * d..], h);
        }
        for (row, _) in ctx
            .chunks_mut(h.max(1))
            .zip(lens)
            .filter(|(_, &len)| len == 0)
        {
            row.fill(0.0);
        }
        tensor::from_vec(ctx, (batch, h))
    }
}

dispatch_simd!(dot, |a: &[f32], b: &[f32]| -> f32 {
    // Two 16-lane accumulators: one chain of FMAs would wait on its own latency.
    let mut acc = [[0f32; 16]; 2];
    let (chunks_a, chunks_b) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for (half, acc) in acc.iter_mut().enumerate() {
            for ((a, &x), &y) in acc.iter_mut().zip(&ca[half * 16..]).zip(&cb[half * 16..]) {
                *a = x.mul_add(y, *a);
            }
        }
    }
    let [first, second] = acc;
    first
        .iter()
        .zip(&second)
        .fold(tail, |total, (a, b)| total + a + b)
});

dispatch_simd!(add_scaled, |sum: &mut [f32], p: f32, x: &[f32]| {
    for (s, &x) in sum.iter_mut().zip(x) {
        *s = p.mul_add(x, *s);
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_token_by_token_definition() -> Result<()> {
        let shape = Shape {
            heads: 3,
            head_dim: 32,
        };
        let (h, d) = (shape.hidden(), shape.head_dim);
        let mut rand = super::super::test_values(0x5eed_1234);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rand()).collect() };
        let dev = Device::Cpu;
        let (wk, wv, bv) = (random(h * h), random(h * h), random(h));
        // Sequences of 5, 1 and 7 rows; the third ends in two padding rows, and the
        // fourth is hidden entirely.
        let hide = -1.0e9f32;
        let starts = vec![0, 5, 6, 13, 15];
        let mut bias = vec![0f32; 15];
        bias[11] = hide;
        bias[12] = hide;
        bias[13] = hide;
        bias[14] = hide;
        let seqs = SeqRows {
            starts: &starts,
            bias: &bias,
        };
        let batch = seqs.batch();
        let x = random(15 * h);
        let q = random(batch * h);
        let layer = ClsAttention::new(
            &Tensor::from_vec(wk.clone(), (h, h), &dev)?,
            &Tensor::from_vec(wv.clone(), (h, h), &dev)?,
            &Tensor::from_vec(bv.clone(), h, &dev)?,
            shape,
        )?;
        let got = layer
            .forward(
                &Tensor::from_vec(x.clone(), (15, h), &dev)?,
                &Tensor::from_vec(q.clone(), (batch, h), &dev)?,
                seqs,
            )?
            .to_vec2::<f32>()?;
        // In f64, as the definition reads: keys and values for every real token.
        let project = |w: &[f32], b: Option<&[f32]>, x: &[f32], out: usize| -> f64 {
            let dot: f64 = (0..h).map(|c| w[out * h + c] as f64 * x[c] as f64).sum();
            dot + b.map_or(0.0, |b| b[out] as f64)
        };
        for s in 0..batch {
            let rows = seqs.rows(s);
            let len = real_length(&seqs.bias[rows.clone()]);
            for head in 0..shape.heads {
                let cols = head * d..(head + 1) * d;
                let token = |t: usize| &x[(rows.start + t) * h..(rows.start + t + 1) * h];
                let scores: Vec<f64> = (0..len)
                    .map(|t| {
                        cols.clone()
                            .map(|c| q[s * h + c] as f64 * project(&wk, None, token(t), c))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in cols {
                    let want: f64 = (0..len)
                        .map(|t| e[t] / total * project(&wv, Some(&bv), token(t), c))
                        .sum();
                    let g = got[s][c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "seq {s} col {c}: {g} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }
}
