//! What a model is to the rest of the program: a padded batch in, logits (and, when
//! asked, attention) out. Every family's model implements `Classifier`.

use anyhow::Result;
use candle_core::Tensor;

/// The model used when none is named: bert-base-uncased fine-tuned on SST-2.
pub const DEFAULT_MODEL: &str = "JeremiahZ/bert-base-uncased-sst2";

/// The NLI model `zero-shot` uses when none is named (DeBERTa-v3-base on MNLI, FEVER, ANLI).
pub const DEFAULT_ZERO_SHOT_MODEL: &str = "MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli";

/// The cross-encoder `rerank` uses when none is named (a BERT MiniLM on MS MARCO).
pub const DEFAULT_RERANK_MODEL: &str = "cross-encoder/ms-marco-MiniLM-L-6-v2";

/// One padded batch, ready for the model: every tensor is `[batch, seq]` u32.
pub struct Batch {
    /// Token ids, padded with 0.
    pub ids: Tensor,
    /// Token type (segment) ids.
    pub type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub mask: Tensor,
}

/// What a forward pass returns.
pub struct Output {
    /// `[batch, num_labels]` f32 logits.
    pub logits: Tensor,
    /// Per layer `[batch, heads, seq, seq]` f32 probabilities; empty unless asked for.
    pub attentions: Vec<Tensor>,
}

/// What to do when the checkpoint has no trained classification head.
#[derive(Debug, Clone, Copy)]
pub struct HeadPolicy {
    /// Run anyway with a seeded random head instead of refusing.
    pub allow_untrained: bool,
    /// Labels the untrained head gets (the checkpoint cannot say).
    pub num_labels: usize,
}

/// A sequence classifier of any family.
pub trait Classifier: Send + Sync {
    /// Classifies a padded batch; `keep_attention` also returns attention probabilities.
    fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output>;

    /// Number of labels the head scores.
    fn num_labels(&self) -> usize;

    /// Whether the classification head came from the checkpoint (false: seeded).
    fn head_is_trained(&self) -> bool;

    /// Whether a forward pass without attention runs each text's real tokens alone, no
    /// padding rows through any layer (so a batch's rows are the same as its texts'
    /// alone).
    fn skips_padding(&self) -> bool;

    /// Has the dense layers `quantize_q8` converts record their input ranges during the
    /// forward passes that follow (a calibration).
    fn record_input_ranges(&mut self);

    /// Turns the encoder's dense layers into int8 ones for `--quantize q8` (CPU, f32),
    /// balanced with the input ranges recorded, if any.
    fn quantize_q8(&mut self) -> Result<()>;
}
