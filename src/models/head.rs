//! What every family's classification head shares: the policy for checkpoints without
//! one, and seeded random layers when the user allows them.

use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::DEFAULT_MODEL;
use crate::layers::{Backend, Linear};

/// What to do when the checkpoint has no trained classification head.
#[derive(Debug, Clone, Copy)]
pub struct HeadPolicy {
    /// Run anyway with a seeded random head instead of refusing.
    pub allow_untrained: bool,
    /// Labels the untrained head gets (the checkpoint cannot say).
    pub num_labels: usize,
}

/// The refusal for a checkpoint without a trained classifier, unless the user allows a
/// seeded one.
pub fn refuse_bare_encoder() -> anyhow::Error {
    anyhow::anyhow!(
        "this checkpoint has no classification head (no classifier.weight): it is a bare encoder such as \
         bert-base-uncased, and a head would be random, so its labels would mean nothing.\n\
         Use a model fine-tuned for classification, e.g. --model {DEFAULT_MODEL}, \
         or pass --allow-untrained-head to run it with a seeded random head anyway."
    )
}

/// A trained classifier's `[num_labels, hidden]` weight under `name`, its shape checked
/// against the hidden size; returns it with its label count.
pub fn classifier_weight(vb: &VarBuilder, name: &str, hidden: usize) -> Result<(Tensor, usize)> {
    let w = vb.get_unchecked(name)?;
    let (num_labels, in_dim) = w.dims2()?;
    if in_dim != hidden {
        bail!("tensor {name} has shape [{num_labels}, {in_dim}], expected [num_labels, {hidden}] (hidden_size)");
    }
    Ok((w, num_labels))
}

/// Seeded random layers for an untrained head: the same on every run and machine.
pub struct Seeder(SplitMix64);

impl Default for Seeder {
    fn default() -> Self {
        Self(SplitMix64(0x5EED_BE27))
    }
}

impl Seeder {
    /// A linear layer with N(0, std) weights and zero bias, as BERT initialises heads.
    pub fn linear(
        &mut self,
        in_dim: usize,
        out_dim: usize,
        std: f64,
        vb: &VarBuilder,
        backend: Backend,
    ) -> Result<Linear> {
        let (dev, dtype) = (vb.device(), vb.dtype());
        let w: Vec<f32> = (0..in_dim * out_dim)
            .map(|_| (self.0.normal() * std) as f32)
            .collect();
        let w = Tensor::from_vec(w, (out_dim, in_dim), dev)?.to_dtype(dtype)?;
        let b = Tensor::zeros(out_dim, dtype, dev)?;
        Linear::new(w, b, backend)
    }
}

/// A tiny deterministic generator, so an untrained head is the same on every run and machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal number (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_head_is_deterministic_and_scaled() {
        let draw = || {
            let mut rng = SplitMix64(7);
            (0..10_000).map(|_| rng.normal()).collect::<Vec<_>>()
        };
        let (a, b) = (draw(), draw());
        assert_eq!(a, b);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
