//! Dense layers: `y = x Wᵀ + b` over the last axis, with what follows them (a residual,
//! an activation) folded into the product where the backend can.

use std::sync::Mutex;

use super::{Activation, Backend, Loader};
use crate::kernels::cpu;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// A dense layer applied to `[batch, seq, in]` as one `[batch * seq, in]` matrix product:
/// one large GEMM instead of `batch` small ones (what `candle_nn::Linear` does for 3-D
/// input).
pub struct Linear {
    weights: Weights,
    bias: Tensor,
    backend: Backend,
    /// `max |x|` per input channel over every input since `record_input_range`: the
    /// calibration `quantize_q8` balances its int8 scales with.
    input_range: Option<Mutex<Vec<f32>>>,
}

/// The weight in the form the layer computes with.
enum Weights {
    /// `[in, out]`, contiguous: the checkpoint's `[out, in]` transposed once at load, so
    /// candle's GEMM reads it row-major and need not repack it on every call (which cost
    /// more than the arithmetic for one short sentence).
    Candle(Tensor),
    /// Packed once for the CPU GEMM kernel, bias included.
    Packed(cpu::PackedLinear),
    /// bf16, packed once for the AMX tiles (`--dtype bf16` where the CPU has them).
    Amx(cpu::AmxLinear),
    /// int8, after `quantize_q8` (bias, residual or GELU applied as it stores).
    Q8(cpu::Q8Linear),
}

/// What follows a dense layer.
#[derive(Clone, Copy)]
enum Then<'a> {
    Nothing,
    Activation(Activation),
    /// A residual of the output's shape, added.
    Residual(&'a Tensor),
}

impl Linear {
    /// From a checkpoint-layout `[out, in]` weight and its `[out]` bias, on `ld`'s
    /// backend.
    pub fn new(weight: Tensor, bias: Tensor, ld: &Loader) -> Result<Self> {
        let backend = ld.backend;
        let amx = ld.bf16_dense && backend == Backend::Kernels && cpu::amx();
        // Without AMX, bf16 weights with f32 arithmetic: the answers bf16 gives, at
        // f32's speed (candle's bf16 matmul ran bert-base 3.2x slower than f32).
        let weight = if ld.bf16_dense && !amx {
            weight.to_dtype(DType::BF16)?.to_dtype(DType::F32)?
        } else {
            weight
        };
        let weights = match backend {
            Backend::Kernels if amx => Weights::Amx(cpu::AmxLinear::new(&weight, &bias)?),
            Backend::Kernels => Weights::Packed(cpu::PackedLinear::new(&weight, &bias)?),
            Backend::Candle | Backend::CandleCpu { .. } => Weights::Candle(transpose(&weight)?),
        };
        Ok(Self {
            weights,
            bias,
            backend,
            input_range: None,
        })
    }

    /// `weight` `[out, in]` and `bias` `[out]` under `ld`, shapes checked.
    pub fn load(ld: &Loader, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::new(
            ld.get((out_dim, in_dim), "weight")?,
            ld.get(out_dim, "bias")?,
            ld,
        )
    }

    /// As `load`, where the checkpoint has a `bias` only when `has_bias` (a config's
    /// `attention_bias`, `mlp_bias`): without one the layer adds zeros, which changes no
    /// bit of the product.
    pub fn load_bias_if(
        ld: &Loader,
        in_dim: usize,
        out_dim: usize,
        has_bias: bool,
    ) -> Result<Self> {
        let weight = ld.get((out_dim, in_dim), "weight")?;
        let bias = if has_bias {
            ld.get(out_dim, "bias")?
        } else {
            Tensor::zeros(out_dim, weight.dtype(), weight.device())?
        };
        Self::new(weight, bias, ld)
    }

    /// From now on, keeps the largest `|x|` of each input channel that passes through,
    /// for `quantize_q8`.
    pub fn record_input_range(&mut self) {
        let channels = match &self.weights {
            Weights::Candle(w) => w.dims().first().copied().unwrap_or(0),
            Weights::Packed(p) => p.in_dim(),
            Weights::Amx(a) => a.in_dim(),
            Weights::Q8(_) => return,
        };
        self.input_range = Some(Mutex::new(vec![0.0; channels]));
    }

    /// Replaces the f32 weight by its int8 form (the f32 copy is freed), its scales
    /// balanced with the input range recorded since `record_input_range`, if any. CPU and
    /// f32 only: the int8 kernel is a CPU one.
    pub fn quantize_q8(&mut self) -> Result<()> {
        if !self.backend.cpu_f32() {
            anyhow::bail!("int8 layers run on the CPU in f32 only");
        }
        let range = match self.input_range.take() {
            Some(r) => Some(
                r.into_inner()
                    .map_err(|_| anyhow::anyhow!("a calibration pass panicked"))?,
            ),
            None => None,
        };
        let range = range.as_deref();
        let q = match &self.weights {
            Weights::Packed(p) => cpu::Q8Linear::new(&p.weight_t()?, &self.bias, range)?,
            Weights::Candle(w) => cpu::Q8Linear::new(w, &self.bias, range)?,
            Weights::Amx(_) => anyhow::bail!("int8 layers are made from f32 weights, not bf16"),
            Weights::Q8(_) => return Ok(()),
        };
        self.weights = Weights::Q8(q);
        Ok(())
    }

    /// `[.., in]` -> `[.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Then::Nothing)
    }

    /// The layer, then `act`.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_then(x, Then::Activation(act))
    }

    /// The layer, plus `residual` (of the output's shape).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Then::Residual(residual))
    }

    /// The packed weight, where the layer runs on the GEMM kernel.
    pub(super) fn packed(&self) -> Option<&cpu::PackedLinear> {
        match &self.weights {
            Weights::Packed(p) => Some(p),
            _ => None,
        }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]` where only the first `lead` outputs of
    /// the flattened rows `rows` and the outputs from `lead` on of every row are asked
    /// for: on the GEMM kernel the rest is not computed (it holds zeros); otherwise
    /// every output is.
    pub(super) fn forward_lead_for_rows(
        &self,
        x: &Tensor,
        lead: usize,
        rows: &[usize],
    ) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        match &self.weights {
            Weights::Packed(p) => Ok(p
                .forward_lead_for_rows(&x.reshape((b * t, i))?, lead, rows)?
                .reshape((b, t, ()))?),
            _ => self.forward(x),
        }
    }

    /// The layer, then `then`: a residual or exact GELU in the CPU kernels' output pass
    /// (f32 or int8), anything else as separate ops.
    fn forward_then(&self, x: &Tensor, then: Then) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&i, lead)) = dims.split_last() else {
            anyhow::bail!("a dense layer needs an input with at least one axis");
        };
        let mut out_dims = lead.to_vec();
        let rows: usize = lead.iter().product();
        let x = x.reshape((rows, i))?;
        if let Some(range) = &self.input_range {
            record_range(range, &x)?;
        }
        // The CPU kernels finish a residual or exact GELU as they store.
        let fused = |forward: &dyn Fn(cpu::Epilogue) -> candle_core::Result<Tensor>| {
            Ok::<_, anyhow::Error>(match then {
                Then::Residual(r) => {
                    let r = r.reshape((rows, ()))?;
                    forward(cpu::Epilogue::BiasResidual(&r))?
                }
                Then::Activation(Activation::GeluErf) => forward(cpu::Epilogue::BiasGelu)?,
                _ => self.finish(forward(cpu::Epilogue::Bias)?, then)?,
            })
        };
        let y = match &self.weights {
            Weights::Packed(p) => fused(&|e| p.forward(&x, e))?,
            Weights::Q8(q) => fused(&|e| q.forward(&x, e))?,
            Weights::Amx(a) => fused(&|e| a.forward(&x, e))?,
            Weights::Candle(w) => self.finish(x.matmul(w)?.broadcast_add(&self.bias)?, then)?,
        };
        out_dims.push(y.dim(1)?);
        Ok(y.reshape(out_dims)?)
    }

    /// `then` as separate ops on a fresh `[rows, out]` output.
    fn finish(&self, y: Tensor, then: Then) -> Result<Tensor> {
        Ok(match then {
            Then::Nothing => y,
            Then::Activation(act) => act.apply_fresh(y, self.backend)?,
            Then::Residual(r) => (y + r.reshape(((), r.dim(candle_core::D::Minus1)?))?)?,
        })
    }
}

/// Raises `range` to `max |x|` per channel of `x` (`[rows, channels]`).
fn record_range(range: &Mutex<Vec<f32>>, x: &Tensor) -> Result<()> {
    let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut range = range
        .lock()
        .map_err(|_| anyhow::anyhow!("a calibration pass panicked"))?;
    cpu::raise_input_range(&mut range, &x);
    Ok(())
}

/// `[rows, cols]` -> `[cols, rows]`, contiguous. On the CPU in f32: groups of 16 output
/// rows in parallel, each reading one cache line of every input row (candle's generic
/// strided copy took most of bert-base's load time).
fn transpose(w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;

    if !(matches!(w.device(), Device::Cpu) && w.dtype() == DType::F32) {
        return Ok(w.t()?.contiguous()?);
    }
    const GROUP: usize = 16;
    let (rows, cols) = w.dims2()?;
    let src = w.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; rows * cols];
    dst.par_chunks_mut(GROUP * rows)
        .enumerate()
        .for_each(|(g, out)| {
            let c0 = g * GROUP;
            let width = out.len() / rows;
            for r in 0..rows {
                let line = &src[r * cols + c0..r * cols + c0 + width];
                for (j, &v) in line.iter().enumerate() {
                    out[j * rows + r] = v;
                }
            }
        });
    Ok(Tensor::from_vec(dst, (cols, rows), w.device())?)
}
