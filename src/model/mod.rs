//! The BERT sequence classifier, built from candle-nn ops as a tree of small structs,
//! each with `load(vb, cfg)` and `forward`. Weight names are the checkpoint's own.

pub mod attention;
pub mod classifier;
pub mod config;
pub mod embeddings;
pub mod encoder;
mod ops;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use classifier::{Head, HeadPolicy};
use config::Config;
use embeddings::Embeddings;
use encoder::Encoder;

/// Padding bias added to attention scores before softmax. Large enough that
/// `exp` underflows to exactly 0, small enough to stay finite after adding a score.
const MASK_BIAS: f64 = -1.0e9;

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

/// `BertForSequenceClassification`: embeddings, encoder, pooler, classifier.
pub struct BertClassifier {
    embeddings: Embeddings,
    encoder: Encoder,
    head: Head,
    /// The architecture this model was built from.
    pub config: Config,
}

impl BertClassifier {
    /// Builds the model from a checkpoint, with or without the `bert.` prefix.
    pub fn load(vb: VarBuilder, cfg: &Config, policy: HeadPolicy) -> Result<Self> {
        let probe = "embeddings.word_embeddings.weight";
        let bert = if vb.contains_tensor(&format!("bert.{probe}")) {
            vb.pp("bert")
        } else if vb.contains_tensor(probe) {
            vb.clone()
        } else {
            bail!("no BERT encoder weights: expected tensor {probe} (with or without the \"bert.\" prefix)");
        };
        Ok(Self {
            embeddings: Embeddings::load(bert.pp("embeddings"), cfg)?,
            encoder: Encoder::load(bert.pp("encoder"), cfg)?,
            head: Head::load(vb, bert, cfg, policy)?,
            config: cfg.clone(),
        })
    }

    /// Number of labels the head scores.
    pub fn num_labels(&self) -> usize {
        self.head.num_labels
    }

    /// Whether the classification head came from the checkpoint (false: seeded).
    pub fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    /// Classifies a padded batch; `keep_attention` also returns attention probabilities.
    pub fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let (b, t) = batch.ids.dims2()?;
        let mask_bias =
            ((batch.mask.to_dtype(DType::F32)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, t))?;
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        let (hidden, attentions) = self.encoder.forward(x, &mask_bias, keep_attention)?;
        let logits = self.head.forward(&hidden)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }
}

/// Opens checkpoint files: `*.safetensors` are memory-mapped, `*.bin` read as PyTorch pickles.
pub fn open_weights(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let Some(first) = files.first() else {
        bail!("no weight files given");
    };
    let is_pth = first
        .extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth");
    if is_pth {
        if files.len() > 1 {
            bail!("sharded PyTorch .bin checkpoints are not supported; convert to safetensors");
        }
        return VarBuilder::from_pth(first, dtype, device)
            .with_context(|| format!("cannot read PyTorch weights {}", first.display()));
    }
    // SAFETY: the mapped files are model weights nobody else writes while we run; this is
    // the same contract every safetensors loader relies on.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }.with_context(|| {
        let names: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
        format!("cannot read safetensors weights {}", names.join(", "))
    })
}

/// A `Linear` named `weight`/`bias` under `vb`, with its shape checked.
fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Ok(candle_nn::linear(in_dim, out_dim, vb)?)
}

/// A dense layer applied to `[batch, seq, in]` as one `[batch * seq, in]` matrix product:
/// one large GEMM instead of `batch` small ones (what `candle_nn::Linear` does for 3-D input).
pub(crate) struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// `weight` `[out, in]` and `bias` `[out]` under `vb`, shapes checked.
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
        ))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let y = x
            .reshape((b * t, i))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        Ok(y.reshape((b, t, ()))?)
    }
}

/// A LayerNorm stored as `weight`/`bias` or, in old TensorFlow ports, `gamma`/`beta`.
fn layer_norm(vb: VarBuilder, cfg: &Config) -> Result<LayerNorm> {
    let h = cfg.hidden_size;
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        (vb.get(h, "weight")?, vb.get(h, "bias")?)
    } else {
        (vb.get(h, "gamma")?, vb.get(h, "beta")?)
    };
    Ok(LayerNorm::new(w, b, cfg.layer_norm_eps))
}
