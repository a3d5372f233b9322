//! Token embeddings: word + token type + position, summed.

use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::{Embedding, Module};

use super::Backend;
use crate::kernels::cpu;

/// The lookup tables of an encoder's input, summed per token (the LayerNorm after them
/// is the model's).
pub struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// `None` for families without segments.
    token_type: Option<Embedding>,
    /// Whether the CPU kernel sums the lookups.
    cpu: bool,
}

impl Embeddings {
    /// From `[rows, hidden]` tables.
    pub fn new(
        word: Tensor,
        position: Tensor,
        token_type: Option<Tensor>,
        backend: Backend,
    ) -> Result<Self> {
        let table = |t: Tensor| -> Result<Embedding> {
            let hidden = t.dim(1)?;
            Ok(Embedding::new(t, hidden))
        };
        Ok(Self {
            word: table(word)?,
            position: table(position)?,
            token_type: token_type.map(table).transpose()?,
            cpu: backend.cpu_f32(),
        })
    }

    /// `ids` and `type_ids` are `[batch, seq]` u32, positions run from 0; returns
    /// `[batch, seq, hidden]`, summed as `(word + type) + position`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        if self.cpu {
            return Ok(cpu::embedding_sum(
                self.word.embeddings(),
                self.token_type.as_ref().map(Embedding::embeddings),
                self.position.embeddings(),
                ids,
                type_ids,
            )?);
        }
        let seq = ids.dim(D::Minus1)?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        let mut x = self.word.forward(ids)?;
        if let Some(types) = &self.token_type {
            x = x.add(&types.forward(type_ids)?)?;
        }
        Ok(x.broadcast_add(&self.position.forward(&positions)?)?)
    }
}
