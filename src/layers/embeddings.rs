//! Token embeddings: word + position + token type, then LayerNorm.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{Embedding, Module, VarBuilder};

use super::config::Config;
use super::layer_norm;
use super::ops::with_cpu_f32;

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
        let x = if super::cpu_f32(self.word.embeddings()) {
            self.sum_cpu_f32(ids, type_ids)?
        } else {
            let seq = ids.dim(D::Minus1)?;
            let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
            self.word
                .forward(ids)?
                .add(&self.token_type.forward(type_ids)?)?
                .broadcast_add(&self.position.forward(&positions)?)?
        };
        Ok(self.norm.forward_fresh(x)?)
    }

    /// The three lookups and their sum straight into one buffer, in candle's order
    /// (`(word + type) + position`, so the same bits): as candle ops (three lookups, a
    /// range, two adds) they made six tensors, and with its LayerNorm this step took
    /// about 2% of classifying one short sentence at a time.
    fn sum_cpu_f32(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let types = type_ids.flatten_all()?.to_vec1::<u32>()?;
        if types.len() != ids.len() {
            bail!(
                "{} token type ids for [{batch}, {seq}] token ids",
                types.len()
            );
        }
        let word = self.word.embeddings();
        let (vocab, h) = word.dims2()?;
        if h == 0 {
            bail!("word_embeddings has no columns (hidden size 0)");
        }
        let kinds = self.token_type.embeddings().dim(0)?;
        let positions = self.position.embeddings().dim(0)?;
        if seq > positions {
            bail!("{seq} tokens, but the model has position embeddings for {positions}");
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {id} is outside the model's vocabulary of {vocab}");
        }
        if let Some(&t) = types.iter().find(|&&t| t as usize >= kinds) {
            bail!("token type id {t} is outside the model's {kinds} token types");
        }
        // One table at a time, each borrowed in place (the word table is most of
        // MiniLM's weights): the word rows copied, then row r of the output adds row
        // `index(r)` of each other table.
        let mut out = with_cpu_f32(word, "word_embeddings", |word| {
            ids.iter()
                .flat_map(|&id| &word[id as usize * h..][..h])
                .copied()
                .collect::<Vec<f32>>()
        })?;
        let mut add_rows = |table: &Tensor, what: &str, index: &dyn Fn(usize) -> usize| {
            with_cpu_f32(table, what, |table| {
                for (r, row) in out.chunks_mut(h).enumerate() {
                    for (o, &v) in row.iter_mut().zip(&table[index(r) * h..][..h]) {
                        *o += v;
                    }
                }
            })
        };
        add_rows(
            self.token_type.embeddings(),
            "token_type_embeddings",
            &|r| types[r] as usize,
        )?;
        add_rows(self.position.embeddings(), "position_embeddings", &|r| {
            r % seq
        })?;
        Ok(Tensor::from_vec(out, (batch, seq, h), &Device::Cpu)?)
    }
}
