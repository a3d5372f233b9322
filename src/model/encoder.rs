//! The stack of transformer layers: attention, then feed-forward, each with a residual.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::SelfAttention;
use super::config::{Config, HiddenAct};
use super::fused::Queries;
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
                Ok(Layer {
                    attention: SelfAttention::load(vb.pp("attention"), cfg)?,
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
        mut x: Tensor,
        mask_bias: &Tensor,
        keep: Keep,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let keep_probs = keep == Keep::EveryTokenAndAttention;
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
                .forward(&x, mask_bias, queries, keep_probs)?;
            probs.extend(p);
            x = layer.ffn.forward(&attended)?;
        }
        Ok((x, probs))
    }
}
