//! LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`.

use super::Loader;
use crate::kernels::cpu;
use anyhow::Result;
use candle_core::{Module, Tensor};

/// A LayerNorm layer: candle's, or the CPU kernel that normalises in place.
pub enum LayerNorm {
    /// candle-nn's layer.
    Candle(candle_nn::LayerNorm),
    /// The CPU kernel (f32), with the parameters as plain vectors.
    Cpu {
        weight: Vec<f32>,
        bias: Vec<f32>,
        eps: f32,
    },
}

impl LayerNorm {
    /// From `weight` and `bias`, both `[hidden]`, on `ld`'s backend.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64, ld: &Loader) -> Result<Self> {
        Ok(if ld.backend.cpu_f32() {
            Self::Cpu {
                weight: weight.to_vec1()?,
                bias: bias.to_vec1()?,
                eps: eps as f32,
            }
        } else {
            Self::Candle(candle_nn::LayerNorm::new(weight, bias, eps))
        })
    }

    /// `weight`/`bias` of size `hidden` under `ld`, or `gamma`/`beta` as old TensorFlow
    /// ports name them.
    pub fn load(ld: &Loader, hidden: usize, eps: f64) -> Result<Self> {
        let (w, b) = if ld.contains_tensor("weight") || !ld.contains_tensor("gamma") {
            (ld.get(hidden, "weight")?, ld.get(hidden, "bias")?)
        } else {
            (ld.get(hidden, "gamma")?, ld.get(hidden, "beta")?)
        };
        Self::new(w, b, eps, ld)
    }

    /// `weight` of size `hidden` under `ld`, and `bias` only when `has_bias` (ModernBERT's
    /// `norm_bias`): without one the layer adds zeros.
    pub fn load_bias_if(ld: &Loader, hidden: usize, eps: f64, has_bias: bool) -> Result<Self> {
        let weight = ld.get(hidden, "weight")?;
        let bias = if has_bias {
            ld.get(hidden, "bias")?
        } else {
            Tensor::zeros(hidden, weight.dtype(), weight.device())?
        };
        Self::new(weight, bias, eps, ld)
    }

    /// Normalises `x`, `[.., hidden]`, into a new tensor (a pre-norm layer keeps `x` for
    /// its residual).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(norm) => Ok(norm.forward(x)?),
            Self::Cpu { .. } => self.forward_fresh(x.copy()?),
        }
    }

    /// Normalises `x`, `[.., hidden]`. The CPU kernel overwrites `x`'s own buffer, so `x`
    /// must be a fresh result that nothing else holds: callers pass the output of the op
    /// just before.
    pub fn forward_fresh(&self, x: Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(norm) => Ok(norm.forward(&x)?),
            Self::Cpu { weight, bias, eps } => {
                let x = x.contiguous()?;
                cpu::layer_norm_in_place(&x, weight, bias, *eps)?;
                Ok(x)
            }
        }
    }
}
