//! Which rows of the hidden states make each sequence of a batch.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::{Backend, Loader, Queries};
use crate::kernels::cpu;

/// Padding bias added to attention scores before softmax. Large enough that `exp`
/// underflows to exactly 0, small enough to stay finite after adding a score.
const MASK_BIAS: f64 = -1.0e9;

/// The rows of a batch's hidden states, grouped into sequences, and the padding bias
/// attention adds. Either the padded batch, `[batch, seq, hidden]`, or (on the CPU
/// kernels, when only each sequence's first token is read at the end) each text's real
/// tokens back to back, `[1, tokens, hidden]`: then padding costs no arithmetic, 3-4% of
/// the tokens of SST-2 and of review snippets in batches of 32 sorted by length.
pub struct Sequences {
    /// The padded batch's `[batch, 1, 1, seq]` f32: 0 for real tokens, a large negative
    /// number for padding (candle's attention reads this).
    pub(super) mask_bias: Tensor,
    /// The first row of each sequence, then the number of rows: `batch + 1` entries.
    starts: Vec<usize>,
    /// Per row, as `mask_bias` (the CPU kernels read this; empty elsewhere).
    bias: Vec<f32>,
}

/// Where a model's rows may go, read off its `Loader` once at load: the CPU kernels can
/// drop padding rows, candle's ops keep the padded batch.
#[derive(Debug, Clone, Copy)]
pub struct RowLayout(Backend);

impl RowLayout {
    /// The layout of the layers `ld` loads.
    pub fn of(ld: &Loader) -> Self {
        Self(ld.backend)
    }
}

impl Sequences {
    /// Whether `lay_out` lays the real tokens back to back (no padding rows) on
    /// `layout` when asked for `first_tokens_only`.
    pub fn drops_padding(layout: RowLayout, first_tokens_only: bool) -> bool {
        layout.0 == Backend::Kernels && first_tokens_only
    }

    /// Lays out the embeddings `x`, `[batch, seq, hidden]`, with `mask` `[batch, seq]`
    /// (1 for real tokens, 0 for padding). `first_tokens_only`: the caller will read
    /// nothing but each sequence's first token at the end (the last layer runs with
    /// `Queries::First`), so the rows may move.
    pub fn lay_out(
        x: Tensor,
        mask: &Tensor,
        layout: RowLayout,
        first_tokens_only: bool,
    ) -> Result<(Tensor, Self)> {
        let (b, t, h) = x.dims3()?;
        let mask_bias =
            ((mask.to_dtype(DType::F32)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, t))?;
        let padded = |mask_bias, bias| Self {
            mask_bias,
            starts: (0..=b).map(|s| s * t).collect(),
            bias,
        };
        if layout.0 != Backend::Kernels {
            // candle's path reads the padded mask tensor itself.
            return Ok((x, padded(mask_bias, Vec::new())));
        }
        let bias = mask_bias.flatten_all()?.to_vec1::<f32>()?;
        if !Self::drops_padding(layout, first_tokens_only) || t == 0 {
            return Ok((x, padded(mask_bias, bias)));
        }
        let (mut starts, mut rows, mut kept) = (vec![0], Vec::new(), Vec::new());
        for (s, seq) in bias.chunks(t).enumerate() {
            // At least [CLS], which the head reads, even for a text the mask hides entirely.
            let len = cpu::real_length(seq).max(1);
            rows.extend((s * t..s * t + len).map(|r| r as u32));
            kept.extend_from_slice(&seq[..len]);
            starts.push(starts[s] + len);
        }
        if rows.len() == b * t {
            return Ok((x, padded(mask_bias, bias)));
        }
        let n = rows.len();
        let rows = Tensor::new(rows, x.device())?;
        let x = x
            .reshape((b * t, h))?
            .index_select(&rows, 0)?
            .reshape((1, n, h))?;
        Ok((
            x,
            Self {
                mask_bias,
                starts,
                bias: kept,
            },
        ))
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Each sequence's first row.
    pub(super) fn first_rows(&self) -> &[usize] {
        &self.starts[..self.batch()]
    }

    /// The kernels' view.
    pub(super) fn rows(&self) -> cpu::SeqRows<'_> {
        cpu::SeqRows {
            starts: &self.starts,
            bias: &self.bias,
        }
    }

    /// The rows of `x` (laid out as here) that `queries` asks for: all of them, or each
    /// sequence's first as `[batch, 1, hidden]`. A layer's residual.
    pub fn queried(&self, x: &Tensor, queries: Queries) -> Result<Tensor> {
        match queries {
            Queries::All => Ok(x.clone()),
            Queries::First => {
                let (b, t, h) = x.dims3()?;
                let first: Vec<u32> = self.first_rows().iter().map(|&r| r as u32).collect();
                let first = Tensor::new(first, x.device())?;
                Ok(x.reshape((b * t, h))?
                    .index_select(&first, 0)?
                    .reshape((self.batch(), 1, h))?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_is_dropped_only_where_asked() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)?.reshape((2, 4, 3))?;
        let mask = Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 0, 0]], &dev)?;
        for backend in [Backend::Kernels, Backend::CandleCpu { model_f32: true }] {
            let (kept, seqs) = Sequences::lay_out(x.clone(), &mask, RowLayout(backend), false)?;
            assert_eq!(kept.dims(), [2, 4, 3]);
            assert_eq!(seqs.starts, [0, 4, 8]);
        }
        // candle's path keeps the padded batch.
        let (same, _) = Sequences::lay_out(
            x.clone(),
            &mask,
            RowLayout(Backend::CandleCpu { model_f32: true }),
            true,
        )?;
        assert_eq!(same.dims(), [2, 4, 3]);
        let (packed, seqs) = Sequences::lay_out(x, &mask, RowLayout(Backend::Kernels), true)?;
        assert_eq!(seqs.starts, [0, 3, 5]);
        assert_eq!(seqs.bias, [0.0; 5]);
        let rows = packed.squeeze(0)?.to_vec2::<f32>()?;
        let first: Vec<f32> = rows.iter().map(|r| r[0]).collect();
        // Rows 0, 1, 2 of the first text and 0, 1 of the second (4 rows of 3 apart).
        assert_eq!(first, [0.0, 3.0, 6.0, 12.0, 15.0]);
        // Each text's first row, as the last layer's residual.
        let residual = seqs.queried(&packed, Queries::First)?;
        assert_eq!(residual.dims(), [2, 1, 3]);
        assert_eq!(
            residual.flatten_all()?.to_vec1::<f32>()?,
            [0.0, 1.0, 2.0, 12.0, 13.0, 14.0]
        );
        Ok(())
    }
}
