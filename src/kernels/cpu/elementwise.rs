//! Element-wise CPU kernels for the steps where candle's generic ops spend most time
//! outside matrix products: exact (erf) GELU, the masked softmax of attention scores and
//! LayerNorm. GELU and softmax use a branch-free exponential that the compiler
//! vectorises. The layers pick these or candle's ops at load.

use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

use super::tensor;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split.
const CHUNK: usize = 1 << 14;

/// The polynomial with `coefficients` (highest power first) at `x`, by Horner's rule
/// with fused multiply-adds: half the instructions of separate ones and shorter
/// dependency chains, and the same result on every path (an FMA rounds once, in
/// hardware or in software).
#[inline(always)]
fn horner(x: f32, coefficients: &[f32]) -> f32 {
    coefficients[1..]
        .iter()
        .fold(coefficients[0], |acc, &c| acc.mul_add(x, c))
}

/// `exp(x)` for f32 with relative error below 3e-7 (range reduction to `|r| <= ln2/2`,
/// degree-7 Taylor polynomial, exponent built from bits). Inputs below -87 give ~0.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 * 2^23 trick, which needs no rounding instruction.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    // The integer n sits in the low mantissa bits of `shifted`: reading it there, instead of
    // an `as i32` conversion (which saturates, one lane at a time), keeps the loop vectorised.
    let n_int = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    // ln 2 split into a part exact in f32 and a small correction, for an accurate remainder.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = horner(
        r,
        &[
            1.0 / 5040.0,
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ],
    );
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    p * scale
}

/// Exact GELU, `x/2 * (1 + erf(x/sqrt 2))`, with erf as `z P(z²) / Q(z²)` for
/// `|z| <= 3.92` (past it erf is ±1 in f32): a rational fit (degrees 5 and 5 in z², made
/// for this crate by least squares on 20,000 points with Lawson reweighting, fit error
/// 1.7e-8, about 3e-7 after f32 rounding). Eleven FMAs and a division per value: the
/// `erfc` formula it replaced (Numerical Recipes' `erfcc` under an exponential) took
/// about thirty operations and was 5% of a one-sentence MiniLM profile on AVX2.
#[inline(always)]
fn gelu_erf_scalar(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).clamp(-ERF_Z_MAX, ERF_Z_MAX);
    let s = z * z;
    let p = horner(s, &ERF_P);
    let q = horner(s, &ERF_Q);
    let half = 0.5 * x;
    half.mul_add(z * p / q, half)
}

/// Past `|z|` = 3.92, erf is ±1 in f32.
pub(crate) const ERF_Z_MAX: f32 = 3.92;

/// erf's numerator polynomial in `z²`, highest power first (fitted as 1.128379 at the
/// end, which is 2/sqrt(pi): erf's own slope at 0).
#[allow(clippy::excessive_precision)] // the fitted coefficients, as printed in f32
pub(crate) const ERF_P: [f32; 6] = [
    2.035_636_3e-6,
    2.874_634_2e-4,
    3.866_075_3e-3,
    5.305_367_7e-2,
    1.927_069_4e-1,
    std::f32::consts::FRAC_2_SQRT_PI,
];

/// erf's denominator polynomial in `z²`, highest power first.
#[allow(clippy::excessive_precision)] // the fitted coefficients, as printed in f32
pub(crate) const ERF_Q: [f32; 6] = [
    3.807_912_4e-5,
    1.187_632_9e-3,
    1.516_777e-2,
    1.150_616_9e-1,
    5.041_137_3e-1,
    1.0,
];

dispatch_simd!(pub(crate) gelu_slice_in_place, |xs: &mut [f32]| {
    for x in xs.iter_mut() {
        *x = gelu_erf_scalar(*x);
    }
});

dispatch_simd!(pub(crate) softmax_row, |dst: &mut [f32],
                             scores: &[f32],
                             mask: &[f32]| {
    for (d, (&s, &m)) in dst.iter_mut().zip(scores.iter().zip(mask)) {
        *d = s + m;
    }
    let max = lane_max(dst);
    for d in dst.iter_mut() {
        *d = fast_exp(*d - max);
    }
    let inv = 1.0 / lane_sum(dst);
    for d in dst.iter_mut() {
        *d *= inv;
    }
});

dispatch_simd!(pub(crate) layer_norm_row, |x: &mut [f32],
                                weight: &[f32],
                                bias: &[f32],
                                eps: f32| {
    // Two passes (mean, then the mean square of the deviations), as PyTorch does: the
    // one-pass `E[x²] - mean²` cancels badly when the mean is large.
    let n = x.len() as f32;
    let mean = lane_sum(x) / n;
    let var = lane_squared_deviations(x, mean) / n;
    let inv_std = 1.0 / (var + eps).sqrt();
    for ((x, &w), &b) in x.iter_mut().zip(weight).zip(bias) {
        *x = (*x - mean) * inv_std * w + b;
    }
});

/// Reductions over 16 independent lanes: a single running max or sum is a chain the
/// compiler must keep in order (floating-point rules), which leaves the loop scalar.
const LANES: usize = 16;

/// `xs` folded with `pick` in 16 lanes, then the lanes and the tail folded together.
#[inline(always)]
fn lane_fold(xs: &[f32], init: f32, pick: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    acc.iter().chain(tail).fold(init, |a, &v| pick(a, v))
}

/// `Σ (x - mean)²`, accumulated in 16 lanes.
#[inline(always)]
fn lane_squared_deviations(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = (v - mean).mul_add(v - mean, *a);
        }
    }
    let tail = tail
        .iter()
        .fold(0.0, |a, &v| (v - mean).mul_add(v - mean, a));
    lane_sum(&acc) + tail
}

/// The largest element (NEG_INFINITY for an empty slice).
#[inline(always)]
pub(crate) fn lane_max(xs: &[f32]) -> f32 {
    lane_fold(xs, f32::NEG_INFINITY, |a, v| if v > a { v } else { a })
}

/// The smallest element (INFINITY for an empty slice).
#[inline(always)]
pub(crate) fn lane_min(xs: &[f32]) -> f32 {
    lane_fold(xs, f32::INFINITY, |a, v| if v < a { v } else { a })
}

/// The sum, accumulated in 16 lanes.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    lane_fold(xs, 0.0, |a, v| a + v)
}

/// Exact GELU written over `x` itself: `x` must be a contiguous f32 CPU tensor that
/// nothing else holds (a dense layer's fresh output), which saves the feed-forward's
/// largest buffer (a quarter of bert-base's activation memory).
pub fn gelu_in_place(x: &Tensor) -> Result<()> {
    tensor::update(x, "GELU", |data| {
        data.par_chunks_mut(CHUNK).for_each(gelu_slice_in_place)
    })
}

/// `softmax(scores + mask_bias)` over the last axis; `scores` is `[batch, heads, q, k]`
/// and `mask_bias` `[batch, 1, 1, k]`, both contiguous f32 on the CPU.
pub fn masked_softmax(scores: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
    let (b, h, q, k) = scores.dims4()?;
    let dst = tensor::read(scores, "masked softmax", |scores| {
        tensor::read(mask_bias, "masked softmax mask", |mask| {
            if mask.len() != b * k {
                bail!(
                    "masked softmax: mask has {} values, expected {}",
                    mask.len(),
                    b * k
                );
            }
            let mut dst = vec![0f32; scores.len()];
            let rows_per_task = (CHUNK / k.max(1)).max(1);
            dst.par_chunks_mut(rows_per_task * k)
                .zip(scores.par_chunks(rows_per_task * k))
                .enumerate()
                .for_each(|(task, (d, s))| {
                    for (i, (d, s)) in d.chunks_mut(k).zip(s.chunks(k)).enumerate() {
                        let row = task * rows_per_task + i;
                        softmax_row(d, s, &mask[(row / (h * q)) * k..][..k]);
                    }
                });
            Ok(dst)
        })
    })???;
    tensor::from_vec(dst, scores.shape().clone())
}

/// LayerNorm over the last axis of `x`, `(x - mean) / sqrt(var + eps) * weight + bias`,
/// written over `x` itself: a contiguous f32 CPU tensor that nothing else holds (the
/// output of the op just before). candle's op scanned each row with one scalar sum and
/// wrote a new buffer.
pub fn layer_norm_in_place(x: &Tensor, weight: &[f32], bias: &[f32], eps: f32) -> Result<()> {
    let hidden = weight.len();
    if bias.len() != hidden || x.dims().last() != Some(&hidden) {
        bail!(
            "LayerNorm: input {:?}, weight [{hidden}] and bias [{}] do not fit",
            x.dims(),
            bias.len()
        );
    }
    let rows_per_task = (CHUNK / hidden.max(1)).max(1);
    tensor::update(x, "LayerNorm", |data| {
        data.par_chunks_mut(rows_per_task * hidden)
            .for_each(|rows| {
                for row in rows.chunks_mut(hidden) {
                    layer_norm_row(row, weight, bias, eps);
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `n` seeded values in [-scale, scale) as a CPU tensor of `shape`.
    fn seeded(seed: u32, scale: f32, shape: &[usize]) -> Result<Tensor> {
        let mut rand = super::super::test_values(seed);
        let n = shape.iter().product();
        Tensor::from_vec(
            (0..n).map(|_| rand() * scale).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (fast_exp(x), (x as f64).exp());
            assert!(
                ((got as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
    }

    #[test]
    fn gelu_matches_erf_definition() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = 0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2));
            let got = gelu_erf_scalar(x) as f64;
            assert!(
                (got - want).abs() < 2e-7 * (1.0 + x.abs() as f64),
                "gelu({x}) = {got}, want {want}"
            );
            x += 0.001;
        }
    }

    #[test]
    fn gelu_in_place_overwrites_the_tensor_with_gelu() -> Result<()> {
        // More than one parallel chunk, to cover the split.
        let x = Tensor::arange(-50_000f32, 50_000f32, &Device::Cpu)?.affine(0.0002, 0.0)?;
        let before = x.to_vec1::<f32>()?;
        gelu_in_place(&x)?;
        for (&v, &g) in before.iter().zip(&x.to_vec1::<f32>()?) {
            let want = 0.5 * v as f64 * (1.0 + erf(v as f64 / std::f64::consts::SQRT_2));
            assert!(
                (g as f64 - want).abs() < 2e-7 * (1.0 + v.abs() as f64),
                "gelu({v}) = {g}"
            );
        }
        Ok(())
    }

    /// erf in f64 by its Taylor series (accurate to ~1e-9 for |x| <= 4; beyond, erf is within
    /// 2e-8 of +-1), as an independent reference.
    fn erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn layer_norm_matches_f64_two_pass() -> Result<()> {
        // A large mean, where the one-pass formula loses digits.
        let x = (seeded(0x1a2b_3c4d, 1.7, &[3, 5, 40])? + 100.0)?;
        let w = seeded(0x5e5e_0001, 1.7, &[40])?;
        let b = seeded(0x5e5e_0002, 1.7, &[40])?;
        let (w_values, b_values) = (w.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let want: Vec<Vec<f64>> = x
            .flatten_to(1)?
            .to_vec2::<f32>()?
            .iter()
            .map(|row| {
                let (w, b) = (&w_values, &b_values);
                let n = row.len() as f64;
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = row
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                row.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        (f64::from(v) - mean) / (var + 1e-12).sqrt() * f64::from(w[i])
                            + f64::from(b[i])
                    })
                    .collect()
            })
            .collect();
        let got = x.copy()?;
        layer_norm_in_place(&got, &w_values, &b_values, 1e-12)?;
        let got = got.flatten_to(1)?.to_vec2::<f32>()?;
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn masked_softmax_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let scores = seeded(0x0bad_cafe, 5.0, &[2, 3, 5, 7])?;
        let mask = Tensor::new(
            &[
                [0f32, 0., 0., 0., 0., -1e9, -1e9],
                [0., 0., 0., 0., 0., 0., 0.],
            ],
            &dev,
        )?
        .reshape((2, 1, 1, 7))?;
        let ours = masked_softmax(&scores, &mask)?;
        let theirs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        let diff = (ours - theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "max difference {diff}");
        Ok(())
    }
}
