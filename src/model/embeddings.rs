//! Token embeddings: word + position + token type, then LayerNorm.

use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::{Embedding, Module, VarBuilder};

use super::config::Config;
use super::layer_norm;

/// `embeddings.*` of a BERT checkpoint.
pub struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: super::ops::LayerNorm,
}

impl Embeddings {
    /// Loads `word_embeddings`, `position_embeddings`, `token_type_embeddings` and `LayerNorm`.
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let table = |name: &str, rows: usize| -> Result<Embedding> {
            let w = vb.pp(name).get((rows, cfg.hidden_size), "weight")?;
            Ok(Embedding::new(w, cfg.hidden_size))
        };
        Ok(Self {
            word: table("word_embeddings", cfg.vocab_size)?,
            position: table("position_embeddings", cfg.max_position_embeddings)?,
            token_type: table("token_type_embeddings", cfg.type_vocab_size)?,
            norm: layer_norm(vb.pp("LayerNorm"), cfg)?,
        })
    }

    /// `ids` and `type_ids` are `[batch, seq]` u32; returns `[batch, seq, hidden]`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let seq = ids.dim(D::Minus1)?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        let x = self
            .word
            .forward(ids)?
            .add(&self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        Ok(self.norm.forward_fresh(x)?)
    }
}
