//! The activation between a feed-forward block's two projections.

use anyhow::Result;
use candle_core::Tensor;

use super::Backend;
use crate::kernels::cpu;

/// An activation function, as configs name them (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf, PyTorch's `nn.GELU()` and BERT's original choice.
    GeluErf,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// Plain ReLU.
    Relu,
    /// tanh (BERT's and RoBERTa's heads).
    Tanh,
}

impl Activation {
    /// Applies the activation to `y`, a layer's fresh output that nothing else holds: on
    /// the CPU in f32, exact GELU overwrites it, which saves the feed-forward's largest
    /// buffer.
    pub(crate) fn apply_fresh(self, y: Tensor, backend: Backend) -> Result<Tensor> {
        Ok(match self {
            Self::GeluErf if backend.cpu_f32() => {
                let y = y.contiguous()?;
                cpu::gelu_in_place(&y)?;
                y
            }
            Self::GeluErf => y.gelu_erf()?,
            Self::GeluTanh => y.gelu()?,
            // NaN stays NaN, as in PyTorch: `max(NaN, 0)` is 0, and a model broken
            // before DistilBERT's head ReLU then printed its bias as an answer.
            Self::Relu => y.ne(&y)?.where_cond(&y, &y.relu()?)?,
            Self::Tanh => y.tanh()?,
        })
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::GeluErf => "GELU (exact erf)",
            Self::GeluTanh => "GELU (tanh approximation)",
            Self::Relu => "ReLU",
            Self::Tanh => "tanh",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_keeps_nan_and_zeroes_the_rest_below_zero() -> Result<()> {
        let x = Tensor::new(
            &[f32::NAN, -1.0, 2.0, f32::NEG_INFINITY, -0.0],
            &candle_core::Device::Cpu,
        )?;
        let y = Activation::Relu
            .apply_fresh(x, Backend::Candle)?
            .to_vec1::<f32>()?;
        assert!(y[0].is_nan(), "{y:?}");
        assert_eq!(&y[1..], &[0.0, 2.0, 0.0, 0.0]);
        Ok(())
    }
}
