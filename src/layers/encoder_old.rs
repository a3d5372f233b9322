//! The stack of transformer layers: attention, then feed-forward, each with a residual.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::SelfAttention;
use super::config::{Config, HiddenAct};
use super::fused::{real_length, Queries, Sequences};
use super::{layer_norm, Dense, Then};

/// `intermediate.dense` + activation + `output.dense` + residual + `output.LayerNorm`.
struct FeedForward {
    up: Dense,
    down: Dense,
    norm: super::ops::LayerNorm,
    act: HiddenAct,
}

impl FeedForward {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            up: Dense::load(
                vb.pp("intermediate").pp("dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
            )?,
            down: Dense::load(
                vb.pp("output").pp("dense"),
                cfg.intermediate_size,
                cfg.hidden_size,
            )?,
            norm: layer_norm(vb.pp("output").pp("LayerNorm"), cfg)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let up = self.up.forward_then(x, Then::Activation(self.act))?;
        let down = self.down.forward_then(&up, Then::Residual(x))?;
        Ok(self.norm.forward_fresh(down)?)
    }
}

/// What `Encoder::forward` returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Each sequence's first token's final state alone, `[batch, 1, hidden]`: the last
    /// layer computes nothing the other tokens alone need (see `SelfAttention::forward`).
    FirstToken,
    /// Every token's final state and every layer's attention probabilities.
    EveryTokenAndAttention,
}

/// One `encoder.layer.N`.
struct Layer {
    attention: SelfAttention,
    ffn: FeedForward,
}

/// `encoder.layer.*`.
pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    /// Loads every `encoder.layer.N` for N below `num_hidden_layers`.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let vb = vb.pp("layer").pp(i);
                let last = i + 1 == cfg.num_layers;
                Ok(Layer {
                    attention: SelfAttention::load(vb.pp("attention"), cfg, last)?,
                    ffn: FeedForward::load(vb, cfg)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Int8 dense layers in every layer but the last. The last one runs on `[CLS]` alone
    /// for classification, so beyond its keys and values it costs next to nothing, yet
    /// its rounding moved the scores most: on SST-2 dev with the MiniLM fixture, keeping
    /// it f32 took label flips against f32 from 15 to 8 of 872 for 4% more time.
    pub fn quantize_q8(&mut self) -> Result<()> {
        let quantized = self.layers.len().saturating_sub(1);
        for layer in self.layers.iter_mut().take(quantized) {
            layer.attention.quantize_q8()?;
            layer.ffn.up.quantize_q8()?;
            layer.ffn.down.quantize_q8()?;
        }
        Ok(())
    }

    /// Runs all layers; returns the last hidden state (as `keep` says) and, for
    /// `Keep::EveryTokenAndAttention`, every layer's attention probabilities.
    pub fn forward(
        &self,
        x: Tensor,
        mask_bias: &Tensor,
        keep: Keep,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let keep_probs = keep == Keep::EveryTokenAndAttention;
        let drop_padding = keep == Keep::FirstToken && !self.layers.is_empty();
        let (mut x, seqs) = lay_out(x, mask_bias, drop_padding)?;
        let mut probs = Vec::new();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let queries = if keep == Keep::FirstToken && i == last {
                Queries::First
            } else {
                Queries::All
            };
            let (attended, p) = layer
                .attention
                .forward(&x, mask_bias, &seqs, queries, keep_probs)?;
            probs.extend(p);
            // The layer's input is freed before the feed-forward allocates.
            x = attended;
            x = layer.ffn.forward(&x)?;
        }
        Ok((x, probs))
    }
}

/// The rows the layers run on, and which of them make each sequence. On the packed
/// kernels, when only `[CLS]` is kept (the last layer then returns one row per text),
/// each text's real tokens go back to back as `[1, tokens, hidden]`, so padding costs
/// no arithmetic: 3-4% of the tokens of SST-2 and of review snippets in batches of 32
/// sorted by length. Otherwise the padded batch stays as it is.
fn lay_out(x: Tensor, mask_bias: &Tensor, drop_padding: bool) -> Result<(Tensor, Sequences)> {
    let (b, t, h) = x.dims3()?;
    let padded = |bias| Sequences {
        starts: (0..=b).map(|s| s * t).collect(),
        bias,
    };
    if !super::packed_kernels_for(&x) {
        // candle's path reads the padded mask tensor itself.
        return Ok((x, padded(Vec::new())));
    }
    let bias = mask_bias.flatten_all()?.to_vec1::<f32>()?;
    if !drop_padding || t == 0 {
        return Ok((x, padded(bias)));
    }
    let (mut starts, mut rows, mut kept) = (vec![0], Vec::new(), Vec::new());
    for (s, seq) in bias.chunks(t).enumerate() {
        // At least [CLS], which the head reads, even for a text the mask hides entirely.
        let len = real_length(seq).max(1);
        rows.extend((s * t..s * t + len).map(|r| r as u32));
        kept.extend_from_slice(&seq[..len]);
        starts.push(starts[s] + len);
    }
    if rows.len() == b * t {
        return Ok((x, padded(bias)));
    }
    let n = rows.len();
    let rows = Tensor::new(rows, x.device())?;
    let x = x
        .reshape((b * t, h))?
        .index_select(&rows, 0)?
        .reshape((1, n, h))?;
    Ok((x, Sequences { starts, bias: kept }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_is_dropped_only_where_asked() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)?.reshape((2, 4, 3))?;
        let hide = super::super::MASK_BIAS as f32;
        let mask_bias =
            Tensor::new(&[0f32, 0., 0., hide, 0., 0., hide, hide], &dev)?.reshape((2, 1, 1, 4))?;
        let (kept, seqs) = lay_out(x.clone(), &mask_bias, false)?;
        assert_eq!(kept.dims(), [2, 4, 3]);
        assert_eq!(seqs.starts, [0, 4, 8]);
        let (packed, seqs) = lay_out(x, &mask_bias, true)?;
        if !super::super::packed_kernels_for(&packed) {
            // The portable path keeps the padded batch.
            assert_eq!(packed.dims(), [2, 4, 3]);
            return Ok(());
        }
        assert_eq!(seqs.starts, [0, 3, 5]);
        assert_eq!(seqs.bias, [0.0; 5]);
        let rows = packed.squeeze(0)?.to_vec2::<f32>()?;
        let first: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        // Rows 0, 1, 2 of the first text and 0, 1 of the second (4 rows of 3 apart).
        assert_eq!(first, [0.0, 3.0, 6.0, 12.0, 15.0]);
        Ok(())
    }
}
