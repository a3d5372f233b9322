//! Rotary position embeddings (RoPE) in the half-split form GPT-NeoX and ModernBERT use:
//! feature `i` of the first half and feature `i` of the second half of each head turn
//! together by `position * inv_freq[i]`, `x * cos + rotate_half(x) * sin` with
//! `rotate_half(x) = cat(-x2, x1)`.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// Cosine and sine tables for every position a model reads.
pub struct Rotary {
    /// `[positions, head_dim / 2]`, in the model's dtype.
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for `positions` positions of heads `head_dim` wide, base `theta`.
    ///
    /// Computed in f32 as transformers does (`inv_freq = 1 / theta^(2i / d)`, then
    /// `position * inv_freq`): at 8,192 positions an angle rounded in f64 instead would
    /// differ by up to 5e-4 radians from PyTorch's.
    pub fn new(
        theta: f64,
        head_dim: usize,
        positions: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..positions)
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let table = |v| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (positions, half), device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x`, `[batch, heads, seq, head_dim]`, position `p` at row `p`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let seq = x.dim(2)?;
        if seq > self.positions() {
            anyhow::bail!(
                "{seq} tokens exceed the {} positions the rotary tables cover",
                self.positions()
            );
        }
        let (cos, sin) = (self.cos.narrow(0, 0, seq)?, self.sin.narrow(0, 0, seq)?);
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition written out: `x * cos + rotate_half(x) * sin`.
    #[test]
    fn rotates_half_split_pairs() -> Result<()> {
        let dev = Device::Cpu;
        let r = Rotary::new(10_000.0, 4, 8, &dev, DType::F32)?;
        let x = Tensor::arange(0f32, 32.0, &dev)?.reshape((1, 1, 8, 4))?;
        let got = r.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        for p in 0..8 {
            let row = &got[p * 4..p * 4 + 4];
            let v: Vec<f32> = (0..4).map(|i| (p * 4 + i) as f32).collect();
            for i in 0..2 {
                let angle = p as f32 * (1.0 / 10_000f32.powf((2 * i) as f32 / 4.0));
                let (c, s) = (angle.cos(), angle.sin());
                let first = v[i] * c - v[i + 2] * s;
                let second = v[i + 2] * c + v[i] * s;
                assert!((row[i] - first).abs() < 1e-4, "{p} {i}: {row:?}");
                assert!((row[i + 2] - second).abs() < 1e-4, "{p} {i}: {row:?}");
            }
        }
        Ok(())
    }
}
