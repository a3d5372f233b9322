//! The sequence-classification head: pooler (dense + tanh on `[CLS]`) and classifier.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::Dense;

/// What to do when the checkpoint has no trained classification head.
#[derive(Debug, Clone, Copy)]
pub struct HeadPolicy {
    /// Run anyway with a seeded random head instead of refusing.
    pub allow_untrained: bool,
    /// Labels the untrained head gets (the checkpoint cannot say).
    pub num_labels: usize,
}

/// A fine-tuned checkpoint to suggest when a bare encoder is refused.
pub const SUGGESTED_MODEL: &str = "JeremiahZ/bert-base-uncased-sst2";

/// Pooler and classifier; `trained` is false when they were seeded, not loaded. Both are
/// `Dense`, like the encoder's layers, so each row's arithmetic is the same whatever the
/// batch size (a BLAS call may pick a different kernel for one row than for three).
pub struct Head {
    pooler: Dense,
    classifier: Dense,
    /// Number of logits the head produces.
    pub num_labels: usize,
    /// Whether the classifier came from the checkpoint.
    pub trained: bool,
}

impl Head {
    /// `root` is the checkpoint's top level (where `classifier.*` lives); `encoder` is
    /// the subtree holding `pooler.*` (`bert.` or the top level).
    pub fn load(
        root: VarBuilder,
        encoder: VarBuilder,
        cfg: &Config,
        policy: HeadPolicy,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let has_classifier = root.contains_tensor("classifier.weight");
        let has_pooler = encoder.contains_tensor("pooler.dense.weight");
        if has_classifier {
            if !has_pooler {
                bail!("the checkpoint has classifier.weight but no pooler.dense.weight; a BERT sequence classifier needs both");
            }
            let w = root.get_unchecked("classifier.weight")?;
            let (num_labels, in_dim) = w.dims2()?;
            if in_dim != h {
                bail!("tensor classifier.weight has shape [{num_labels}, {in_dim}], expected [num_labels, {h}] (hidden_size)");
            }
            let bias = root.pp("classifier").get(num_labels, "bias")?;
            return Ok(Self {
                pooler: Dense::load(encoder.pp("pooler").pp("dense"), h, h)?,
                classifier: Dense::new(w, bias)?,
                num_labels,
                trained: true,
            });
        }
        if !policy.allow_untrained {
            bail!(
                "this checkpoint has no classification head (no classifier.weight): it is a bare encoder such as \
                 bert-base-uncased, and a head would be random, so its labels would mean nothing.\n\
                 Use a model fine-tuned for classification, e.g. --model {SUGGESTED_MODEL}, \
                 or pass --allow-untrained-head to run it with a seeded random head anyway."
            );
        }
        let dev = root.device();
        let mut rng = SplitMix64(0x5EED_BE27);
        let pooler = if has_pooler {
            Dense::load(encoder.pp("pooler").pp("dense"), h, h)?
        } else {
            seeded_linear(&mut rng, h, h, cfg.initializer_range, dev, root.dtype())?
        };
        let n = policy.num_labels.max(1);
        Ok(Self {
            pooler,
            classifier: seeded_linear(&mut rng, h, n, cfg.initializer_range, dev, root.dtype())?,
            num_labels: n,
            trained: false,
        })
    }

    /// `hidden` is the encoder's `[batch, seq, hidden]`; returns `[batch, num_labels]` logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        // Contiguous: BLAS backends (MKL, Accelerate) need unit-stride rows.
        let cls = hidden.narrow(1, 0, 1)?.contiguous()?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        Ok(self.classifier.forward(&pooled)?.squeeze(1)?)
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

/// A linear layer with N(0, std) weights and zero bias, as BERT initialises heads.
fn seeded_linear(
    rng: &mut SplitMix64,
    in_dim: usize,
    out_dim: usize,
    std: f64,
    dev: &Device,
    dtype: candle_core::DType,
) -> Result<Dense> {
    let w: Vec<f32> = (0..in_dim * out_dim)
        .map(|_| (rng.normal() * std) as f32)
        .collect();
    let w = Tensor::from_vec(w, (out_dim, in_dim), dev)?.to_dtype(dtype)?;
    let b = Tensor::zeros(out_dim, dtype, dev)?;
    Dense::new(w, b)
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
