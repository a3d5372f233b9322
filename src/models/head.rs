//! What every family's classification head shares: the policy for checkpoints without
//! one, and seeded random layers when the user allows them.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::classifier::{HeadPolicy, DEFAULT_MODEL};
use super::config::Config;
use crate::layers::{Activation, Linear, Loader};

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

/// A trained classifier's `[num_labels, width]` weight `name` under `vb` (`full_name`
/// in messages), its shape checked; returns it with its label count.
fn classifier_weight(
    vb: &Loader,
    name: &str,
    full_name: &str,
    width: usize,
) -> Result<(Tensor, usize)> {
    let w = vb.get_unchecked(name)?;
    let (num_labels, in_dim) = w.dims2()?;
    if in_dim != width {
        bail!(
            "tensor {full_name} has shape [{num_labels}, {in_dim}], expected [num_labels, {width}]"
        );
    }
    if num_labels == 0 {
        bail!("tensor {full_name} has shape [0, {in_dim}]: a classifier without outputs has no label to give");
    }
    Ok((w, num_labels))
}

/// The head every supported family puts on its encoder: the first token's hidden state,
/// a dense layer and its activation, then the projection to the labels. Only the names
/// differ: BERT's `bert.pooler.dense` + tanh + `classifier`, RoBERTa's
/// `classifier.dense` + tanh + `classifier.out_proj`, ELECTRA's the same with GELU,
/// DistilBERT's `pre_classifier` + ReLU + `classifier`, DeBERTa's `pooler.dense` +
/// `pooler_hidden_act` + `classifier`.
pub struct FirstTokenHead {
    dense: Linear,
    act: Activation,
    out: Linear,
    num_labels: usize,
    /// False when the layers were seeded, not loaded.
    pub trained: bool,
}

/// Where a family keeps its first-token head, and its shape.
pub struct HeadSpec<'a> {
    /// The dense layer's `weight` and `bias`: the hidden size to `width`.
    pub dense: Loader<'a>,
    /// The output layer's: `width` to the labels (as many as its weight has rows).
    pub out: Loader<'a>,
    /// Width of the dense layer's output.
    pub width: usize,
    /// Activation after the dense layer.
    pub act: Activation,
}

impl FirstTokenHead {
    /// The head `spec` describes. Without its output layer the policy decides: refuse,
    /// or seed both layers (the dense one only where the checkpoint lacks it).
    pub fn load(spec: HeadSpec, cfg: &Config, policy: HeadPolicy) -> Result<Self> {
        let HeadSpec {
            dense,
            out,
            width,
            act,
        } = spec;
        let h = cfg.hidden_size;
        let has_dense = dense.contains_tensor("weight");
        let load_dense = || Linear::load(&dense, h, width);
        if out.contains_tensor("weight") {
            if !has_dense {
                bail!(
                    "the checkpoint has {}.weight but no {}.weight; a {} sequence classifier needs both",
                    out.prefix(),
                    dense.prefix(),
                    cfg.family_name
                );
            }
            let name = format!("{}.weight", out.prefix());
            let (w, num_labels) = classifier_weight(&out, "weight", &name, width)?;
            let bias = out.get(num_labels, "bias")?;
            return Ok(Self {
                dense: load_dense()?,
                act,
                out: Linear::new(w, bias, &out)?,
                num_labels,
                trained: true,
            });
        }
        if !policy.allow_untrained {
            return Err(refuse_bare_encoder());
        }
        let mut seeder = Seeder::default();
        let std = cfg.initializer_range;
        let dense = if has_dense {
            load_dense()?
        } else {
            seeder.linear(h, width, std, &out)?
        };
        let n = policy.num_labels.max(1);
        Ok(Self {
            dense,
            act,
            out: seeder.linear(width, n, std, &out)?,
            num_labels: n,
            trained: false,
        })
    }

    /// Labels scored.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// `hidden` is the encoder's `[batch, seq, hidden]`; returns `[batch, num_labels]`
    /// logits from each sequence's first token.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        // Contiguous: BLAS backends (MKL, Accelerate) need unit-stride rows.
        let first = hidden.narrow(1, 0, 1)?.contiguous()?;
        let pooled = self.dense.forward_act(&first, self.act)?;
        Ok(self.out.forward(&pooled)?.squeeze(1)?)
    }
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
        vb: &Loader,
    ) -> Result<Linear> {
        let (dev, dtype) = (vb.device(), vb.dtype());
        let w: Vec<f32> = (0..in_dim * out_dim)
            .map(|_| (self.0.normal() * std) as f32)
            .collect();
        let w = Tensor::from_vec(w, (out_dim, in_dim), dev)?.to_dtype(dtype)?;
        let b = Tensor::zeros(out_dim, dtype, dev)?;
        Linear::new(w, b, vb)
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
