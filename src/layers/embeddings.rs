//! Token embeddings: word + token type + position, summed.

use anyhow::Result;
use candle_core::Tensor;
use candle_nn::{Embedding, Module};

use super::Loader;
use crate::kernels::cpu;

/// How a family numbers the positions it looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, ... in every sequence (BERT, DistilBERT, ELECTRA, DeBERTa).
    FromZero,
    /// RoBERTa's: real tokens count up from `padding_idx + 1`, and a token whose id is
    /// the padding id sits at `padding_idx` (transformers'
    /// `create_position_ids_from_input_ids`: from the ids, not the attention mask).
    PastPadding {
        /// The padding token's id, which is also its position.
        padding_idx: u32,
    },
}

impl Positions {
    /// One position per token of the `[batch, seq]` ids, flattened (the ids are read
    /// only where the numbering depends on them).
    fn ids(self, ids: &Tensor) -> Result<Vec<u32>> {
        let (batch, seq) = ids.dims2()?;
        Ok(match self {
            Self::FromZero => (0..batch * seq).map(|r| (r % seq) as u32).collect(),
            Self::PastPadding { padding_idx } => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                past_padding(&ids, seq, padding_idx)
            }
        })
    }
}

/// RoBERTa's positions for `[.., seq]` ids, flattened.
fn past_padding(ids: &[u32], seq: usize, padding_idx: u32) -> Vec<u32> {
    ids.chunks(seq.max(1))
        .flat_map(|row| {
            let mut count = 0;
            row.iter().map(move |&id| {
                if id == padding_idx {
                    padding_idx
                } else {
                    count += 1;
                    padding_idx + count
                }
            })
        })
        .collect()
}

/// The lookup tables of an encoder's input, summed per token (the LayerNorm after them
/// is the model's).
pub struct Embeddings {
    word: Embedding,
    /// `None` for families without absolute positions (DeBERTa-v3).
    position: Option<(Embedding, Positions)>,
    /// `None` for families without segments.
    token_type: Option<Embedding>,
    /// Whether the CPU kernel sums the lookups.
    cpu: bool,
}

impl Embeddings {
    /// From `[rows, width]` tables, on `ld`'s backend.
    pub fn new(
        word: Tensor,
        position: Option<(Tensor, Positions)>,
        token_type: Option<Tensor>,
        ld: &Loader,
    ) -> Result<Self> {
        let table = |t: Tensor| -> Result<Embedding> {
            let hidden = t.dim(1)?;
            Ok(Embedding::new(t, hidden))
        };
        Ok(Self {
            word: table(word)?,
            position: position
                .map(|(t, scheme)| Ok::<_, anyhow::Error>((table(t)?, scheme)))
                .transpose()?,
            token_type: token_type.map(table).transpose()?,
            cpu: ld.backend.cpu_f32(),
        })
    }

    /// `ids` and `type_ids` are `[batch, seq]` u32; returns `[batch, seq, width]`,
    /// summed as `(word + type) + position`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let position_ids = match &self.position {
            Some((_, Positions::FromZero)) if !self.cpu => None,
            Some((_, scheme)) => Some(scheme.ids(ids)?),
            None => None,
        };
        if self.cpu {
            let position = self
                .position
                .as_ref()
                .zip(position_ids.as_deref())
                .map(|((table, _), ids)| (table.embeddings(), ids));
            return Ok(cpu::embedding_sum(
                self.word.embeddings(),
                self.token_type.as_ref().map(Embedding::embeddings),
                position,
                ids,
                type_ids,
            )?);
        }
        let mut x = self.word.forward(ids)?;
        if let Some(types) = &self.token_type {
            x = x.add(&types.forward(type_ids)?)?;
        }
        Ok(match (&self.position, position_ids) {
            (None, _) => x,
            (Some((table, _)), Some(position_ids)) => {
                let position_ids = Tensor::from_vec(position_ids, (batch, seq), ids.device())?;
                x.add(&table.forward(&position_ids)?)?
            }
            (Some((table, _)), None) => {
                let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
                x.broadcast_add(&table.forward(&positions)?)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roberta_positions_skip_padding_ids_wherever_they_are() -> Result<()> {
        // <s> x <pad> y </s> <pad>: the literal pad inside the text keeps position 1 and
        // does not advance the count, like the batch padding after it.
        assert_eq!(past_padding(&[0, 7, 1, 8, 2, 1], 6, 1), [2, 3, 1, 4, 5, 1]);
        let ids = Tensor::new(&[[5u32, 6], [7, 8]], &candle_core::Device::Cpu)?;
        assert_eq!(Positions::FromZero.ids(&ids)?, [0, 1, 0, 1]);
        let scheme = Positions::PastPadding { padding_idx: 1 };
        assert_eq!(scheme.ids(&ids)?, [2, 3, 2, 3]);
        Ok(())
    }
}
