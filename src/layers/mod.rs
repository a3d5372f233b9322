//! The building blocks every encoder family is made of: dense layers, LayerNorm, the
//! embedding sum, self-attention (BERT's, DeBERTa's, and attention over projected inputs
//! with rotary positions, windows or a causal mask), activations, and the row layout
//! they share.
//!
//! Each block picks its implementation once, at load, from the `Backend` its `Loader`
//! carries, and keeps it as an enum: its forward pass only dispatches on that. Model
//! files hand blocks a `Loader` and never see which implementation runs.

mod activation;
mod attend;
mod attention;
mod disentangled;
mod embeddings;
mod layer_norm;
mod linear;
mod loader;
mod rotary;
mod sequences;

use candle_core::{DType, Device};

pub use activation::Activation;
pub use attend::{padding_bias, Attend, Visibility};
pub use attention::{Queries, SelfAttention};
pub use disentangled::{DisentangledAttention, RelativePositions};
pub use embeddings::{Embeddings, Positions};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use loader::Loader;
pub use rotary::Rotary;
pub use sequences::{RowLayout, Sequences};

/// How a model's layers compute, chosen once when it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// candle and candle-nn ops alone: GPUs and Metal.
    Candle,
    /// candle's ops for matrix products and split-head attention, with the CPU kernels
    /// for the steps that run in f32 there (the attention softmax always; the embedding
    /// sum, LayerNorm and GELU when the model is f32): CPUs without AVX2 and FMA, half
    /// precision on the CPU, and `BERT_CLI_PORTABLE=1`.
    CandleCpu {
        /// Whether the model computes in f32.
        model_f32: bool,
    },
    /// Every step on the CPU kernels, in f32: dense layers packed once for the GEMM
    /// kernel (bias, residual or GELU applied as results are stored), attention fused
    /// per (sequence, head), the last layer's first-token attention folded, and the rows
    /// of each text's real tokens laid back to back. CPUs with AVX-512 F, or AVX2 and
    /// FMA.
    Kernels,
}

impl Backend {
    /// The fastest backend for `dtype` on `device`.
    ///
    /// `BERT_CLI_PORTABLE=1` stays on candle's products on any CPU;
    /// `BERT_CLI_FORCE_KERNELS=1` takes the CPU kernels even without AVX2 (through
    /// the portable micro-kernel: same results, slower than candle's matmul), so that
    /// the kernel path can be tested on any CPU; `BERT_CLI_CANDLE_OPS=1` takes the GPU's
    /// path (candle ops alone) on the CPU, so that it can be tested without a GPU.
    pub fn choose(device: &Device, dtype: DType) -> Self {
        use crate::kernels::cpu;
        if !device.is_cpu() || cpu::env_flag("BERT_CLI_CANDLE_OPS") {
            return Self::Candle;
        }
        let model_f32 = dtype == DType::F32;
        let forced = cpu::env_flag("BERT_CLI_FORCE_KERNELS");
        if model_f32 && !cpu::portable_only() && (cpu::fast_kernels() || forced) {
            Self::Kernels
        } else {
            Self::CandleCpu { model_f32 }
        }
    }

    /// Whether `dtype` on `device` runs as an f32 model whose dense layers are bf16
    /// (`Loader::with_bf16_dense`): bf16 on the CPU, as PyTorch's bf16 autocast does,
    /// since candle's bf16 ops there ran bert-base 3.2x slower than f32. Not under
    /// `BERT_CLI_CANDLE_OPS=1`, which is there to run the GPU's path on the CPU.
    pub fn bf16_dense(device: &Device, dtype: DType) -> bool {
        dtype == DType::BF16 && Self::choose(device, DType::F32) != Self::Candle
    }

    /// Whether the model is f32 on the CPU, where the element-wise kernels apply.
    fn cpu_f32(self) -> bool {
        matches!(self, Self::Kernels | Self::CandleCpu { model_f32: true })
    }

    /// In words, for `info` and warnings.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Candle => "candle ops",
            Self::CandleCpu { .. } => "candle matrix products, CPU element-wise kernels",
            Self::Kernels => "CPU kernels (packed GEMM, fused attention)",
        }
    }
}
