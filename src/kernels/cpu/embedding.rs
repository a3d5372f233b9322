//! The embedding lookups and their sum in one pass over the output.

use candle_core::{bail, Result, Tensor};

use super::tensor;

/// `[batch, seq, hidden]` where token `r` (flattened) is the sum of rows `word[ids[r]]`,
/// `token_type[type_ids[r]]` and `position.0[position.1[r]]`, added in that order
/// (candle's order, so the same bits as its ops). `ids` and `type_ids` are `[batch,
/// seq]` u32; the tables are `[rows, hidden]` f32 on the CPU; the position ids, one per
/// token, are the caller's (families number positions differently). Ids outside a table
/// are errors naming the id.
///
/// As candle ops (three lookups, a range, two adds) this made six tensors; with its
/// LayerNorm it took about 2% of classifying one short sentence at a time.
pub fn embedding_sum(
    word: &Tensor,
    token_type: Option<&Tensor>,
    position: Option<(&Tensor, &[u32])>,
    ids: &Tensor,
    type_ids: &Tensor,
) -> Result<Tensor> {
    let (batch, seq) = ids.dims2()?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let types = type_ids.flatten_all()?.to_vec1::<u32>()?;
    if types.len() != ids.len() {
        bail!(
            "{} token type ids for [{batch}, {seq}] token ids",
            types.len()
        );
    }
    let (vocab, h) = word.dims2()?;
    if h == 0 {
        bail!("word_embeddings has no columns (hidden size 0)");
    }
    if let Some((table, position_ids)) = position {
        let rows = table.dim(0)?;
        if position_ids.len() != ids.len() {
            bail!(
                "{} position ids for [{batch}, {seq}] token ids",
                position_ids.len()
            );
        }
        if let Some(&p) = position_ids.iter().find(|&&p| p as usize >= rows) {
            bail!(
                "{seq} tokens need position {p}, but the model has position embeddings for {rows}"
            );
        }
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {id} is outside the model's vocabulary of {vocab}");
    }
    if let Some(table) = token_type {
        let kinds = table.dim(0)?;
        if let Some(&t) = types.iter().find(|&&t| t as usize >= kinds) {
            bail!("token type id {t} is outside the model's {kinds} token types");
        }
    }
    // One table at a time, each borrowed in place (the word table is most of MiniLM's
    // weights): the word rows copied, then row r of the output adds row `index(r)` of
    // each other table.
    let mut out = tensor::read(word, "word_embeddings", |word| {
        ids.iter()
            .flat_map(|&id| &word[id as usize * h..][..h])
            .copied()
            .collect::<Vec<f32>>()
    })?;
    let mut add_rows = |table: &Tensor, what: &str, index: &dyn Fn(usize) -> usize| {
        tensor::read(table, what, |table| {
            for (r, row) in out.chunks_mut(h).enumerate() {
                for (o, &v) in row.iter_mut().zip(&table[index(r) * h..][..h]) {
                    *o += v;
                }
            }
        })
    };
    if let Some(table) = token_type {
        add_rows(table, "token_type_embeddings", &|r| types[r] as usize)?;
    }
    if let Some((table, position_ids)) = position {
        add_rows(table, "position_embeddings", &|r| position_ids[r] as usize)?;
    }
    tensor::from_vec(out, (batch, seq, h))
}
