//! CPU kernels for the steps where candle's generic ops spend most time outside matrix
//! products: exact (erf) GELU, the masked softmax of attention scores and LayerNorm.
//! GELU and softmax use a branch-free exponential that the compiler vectorises; all
//! fall back to candle's own ops on other devices, dtypes or layouts.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, InplaceOp1, InplaceOp3, Layout, Result, Shape,
    Tensor,
};
use rayon::prelude::*;

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

/// Exact GELU, `x/2 * (1 + erf(x/sqrt 2))`, via the complementary error function
/// approximation of Numerical Recipes (`erfcc`, fractional error below 1.2e-7).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
fn gelu_erf_scalar(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = horner(
        t,
        &[
            0.170_872_77,
            -0.822_152_23,
            1.488_515_87,
            -1.135_203_98,
            0.278_868_07,
            -0.186_288_06,
            0.096_784_18,
            0.374_091_96,
            1.000_023_7,
            -1.265_512_2,
        ],
    );
    let erfc = t * fast_exp(-z * z + poly);
    let half = 0.5 * erfc;
    x * if x >= 0.0 { 1.0 - half } else { half }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

dispatch_simd!(gelu_slice, |dst: &mut [f32], src: &[f32]| {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = gelu_erf_scalar(s);
    }
});

dispatch_simd!(pub(crate) gelu_in_place, |xs: &mut [f32]| {
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

dispatch_simd!(layer_norm_row, |x: &mut [f32],
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

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "bert-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, CustomOp1::name(self))?;
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| gelu_slice(d, s));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

impl InplaceOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "bert-gelu-erf-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: expected f32", InplaceOp1::name(self));
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", InplaceOp1::name(self));
        };
        data[start..end]
            .par_chunks_mut(CHUNK)
            .for_each(gelu_in_place);
        Ok(())
    }
}

/// Exact GELU written over `x` itself, for a freshly computed contiguous f32 CPU tensor
/// that nothing else holds: saves the feed-forward's largest buffer (a quarter of
/// bert-base's activation memory).
pub fn gelu_erf_in_place(x: &Tensor) -> Result<()> {
    x.inplace_op1(&GeluErf)
}

/// Exact GELU; the fast kernel on contiguous f32 CPU tensors, candle's op elsewhere.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "bert-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(s1, l1, self.name())?;
        let mask = contiguous_f32(s2, l2, self.name())?;
        let (b, h, q, k) = l1.shape().dims4()?;
        if mask.len() != b * k {
            candle_core::bail!(
                "{}: mask has {} values, expected {}",
                self.name(),
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
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// `softmax(scores + mask_bias)` over the last axis; `scores` is `[batch, heads, q, k]` f32
/// and `mask_bias` `[batch, 1, 1, k]` f32.
pub fn masked_softmax(scores: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
    let cpu = matches!(scores.device(), Device::Cpu);
    if cpu && scores.dtype() == DType::F32 && scores.is_contiguous() && mask_bias.is_contiguous() {
        scores.apply_op2_no_bwd(mask_bias, &MaskedSoftmax)
    } else {
        candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask_bias)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn gelu_in_place_equals_gelu() -> Result<()> {
        let x = Tensor::arange(-5000f32, 5000f32, &Device::Cpu)?.affine(0.002, 0.0)?;
        let want = gelu_erf(&x)?.to_vec1::<f32>()?;
        gelu_erf_in_place(&x)?;
        assert_eq!(x.to_vec1::<f32>()?, want);
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
        let dev = Device::Cpu;
        // A large mean, where the one-pass formula loses digits.
        let x = (Tensor::randn(0f32, 1.0, (3, 5, 40), &dev)? + 100.0)?;
        let w = Tensor::randn(0f32, 1.0, 40, &dev)?;
        let b = Tensor::randn(0f32, 1.0, 40, &dev)?;
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
        let got = LayerNorm::new(w.clone(), b.clone(), 1e-12)
            .forward_fresh(x.copy()?)?
            .flatten_to(1)?
            .to_vec2::<f32>()?;
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((f64::from(*g) - w).abs() < 1e-4, "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn masked_softmax_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let scores = Tensor::randn(0f32, 3.0, (2, 3, 5, 7), &dev)?;
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

/// A raw pointer that may cross threads, for kernels whose parallel tasks write disjoint
/// blocks of one output that interleave in memory; the caller keeps the writes disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used for disjoint writes (see the users' SAFETY comments).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `task(0..n)` on the rayon pool, one task per job.
///
/// Left to itself rayon stops splitting a range at about a quarter of it, so a thread
/// that ran out of work found nothing to steal while the other ran a 27-task chunk alone:
/// in a bert-base profile the second worker slept 14% of the run, most of it in the GEMM
/// and attention loops that now call this.
pub(crate) fn par_tasks(n: usize, task: impl Fn(usize) + Send + Sync) {
    (0..n).into_par_iter().with_max_len(1).for_each(task);
}

/// LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * weight + bias`: candle's
/// layer, with an in-place CPU kernel in front.
pub struct LayerNorm(candle_nn::LayerNorm);

impl LayerNorm {
    /// From `weight` and `bias`, both `[hidden]`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self(candle_nn::LayerNorm::new(weight, bias, eps))
    }

    /// Normalises `x`, `[.., hidden]`. On the CPU in f32 it overwrites `x`'s own buffer
    /// (candle's op scanned each row with one scalar sum and wrote a new buffer), so `x`
    /// must be a fresh result that nothing else holds: every caller passes the output
    /// of the op just before. Elsewhere candle's layer runs.
    pub fn forward_fresh(&self, x: Tensor) -> Result<Tensor> {
        let weight = self.0.weight();
        match self.0.bias() {
            Some(bias)
                if matches!(x.device(), Device::Cpu)
                    && x.dtype() == DType::F32
                    && weight.dtype() == DType::F32
                    && x.is_contiguous() =>
            {
                let eps = self.0.eps() as f32;
                x.inplace_op3(weight, bias, &LayerNormInPlace { eps })?;
                Ok(x)
            }
            _ => candle_core::Module::forward(&self.0, &x),
        }
    }
}

/// `LayerNorm::forward_fresh`'s CPU kernel.
struct LayerNormInPlace {
    eps: f32,
}

impl InplaceOp3 for LayerNormInPlace {
    fn name(&self) -> &'static str {
        "bert-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let weight = contiguous_f32(s2, l2, "layer-norm weight")?;
        let bias = contiguous_f32(s3, l3, "layer-norm bias")?;
        let hidden = weight.len();
        let CpuStorage::F32(data) = s1 else {
            candle_core::bail!("{}: expected f32", self.name());
        };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name());
        };
        if bias.len() != hidden || l1.dims().last() != Some(&hidden) {
            candle_core::bail!(
                "{}: input {:?}, weight [{hidden}] and bias [{}] do not fit",
                self.name(),
                l1.dims(),
                bias.len()
            );
        }
        let rows_per_task = (CHUNK / hidden.max(1)).max(1);
        data[start..end]
            .par_chunks_mut(rows_per_task * hidden)
            .for_each(|rows| {
                for row in rows.chunks_mut(hidden) {
                    layer_norm_row(row, weight, bias, self.eps);
                }
            });
        Ok(())
    }
}

/// Runs `f` on the data of a contiguous f32 tensor on the CPU (no copy); `what` names the
/// caller in the error otherwise.
pub(crate) fn with_cpu_f32<T>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{what}: expected a CPU tensor");
    };
    Ok(f(contiguous_f32(storage, layout, what)?))
}
