//! The BERT sequence classifier, built from candle-nn ops as a tree of small structs,
//! each with `load(vb, cfg)` and `forward`. Weight names are the checkpoint's own.

/// Runs `body` compiled for the widest vector unit the CPU has (decided at run time, so
/// the binary still runs on any x86-64). No fast-math: every path gives the same numbers.
macro_rules! dispatch_simd {
    ($vis:vis $name:ident, |$($arg:ident: $ty:ty),*| $(-> $ret:ty)? $body:block) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been checked for the enabled features.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

pub mod attention;
pub mod classifier;
mod cls_attention;
pub mod config;
pub mod embeddings;
pub mod encoder;
mod fused;
mod ops;
mod q8;
mod sgemm;
mod weights;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use classifier::{Head, HeadPolicy};
use config::{Config, HiddenAct};
use embeddings::Embeddings;
use encoder::{Encoder, Keep};
pub use weights::open_weights;

/// A seeded xorshift source of values in [-1, 1) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(mut seed: u32) -> impl FnMut() -> f32 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
    }
}

/// `BERT_CLI_PORTABLE=1` turns off the AVX-512 kernels (packed f32, fused attention,
/// VNNI int8), so the portable path that CPUs without AVX-512 take can be checked, or
/// chosen, on any machine. Read when a kernel is first chosen.
fn portable_only() -> bool {
    std::env::var_os("BERT_CLI_PORTABLE").is_some_and(|v| !v.is_empty() && v != "0")
}

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

    /// Turns the encoder's dense layers (attention projections and feed-forward) into int8
    /// ones for `--quantize q8`. CPU and f32 only: the kernel is a CPU one.
    pub fn quantize_q8(&mut self) -> Result<()> {
        self.encoder.quantize_q8()
    }

    /// Whether the int8 layers have this CPU's fast kernel (AVX-512 VNNI).
    pub fn q8_is_fast() -> bool {
        q8::vnni_available()
    }

    /// Whether f32 runs on the packed AVX-512 kernels (`sgemm`, `fused`), rather than
    /// the portable path through candle's ops.
    pub fn packed_kernels() -> bool {
        sgemm::available()
    }

    /// Classifies a padded batch; `keep_attention` also returns attention probabilities.
    pub fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let (b, t) = batch.ids.dims2()?;
        let mask_bias =
            ((batch.mask.to_dtype(DType::F32)? - 1.0)? * -MASK_BIAS)?.reshape((b, 1, 1, t))?;
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        // The head reads only [CLS], so the last layer skips the other tokens unless
        // their attention is wanted.
        let keep = if keep_attention {
            Keep::EveryTokenAndAttention
        } else {
            Keep::FirstToken
        };
        let (hidden, attentions) = self.encoder.forward(x, &mask_bias, keep)?;
        let logits = self.head.forward(&hidden)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }
}

/// A dense layer applied to `[batch, seq, in]` as one `[batch * seq, in]` matrix product:
/// one large GEMM instead of `batch` small ones (what `candle_nn::Linear` does for 3-D input).
pub(crate) struct Dense {
    weights: DenseWeights,
    bias: Tensor,
}

/// A dense layer's weights in the form it computes with.
enum DenseWeights {
    /// f32 packed for the AVX-512 kernel, bias included (CPU, f32, AVX-512 only).
    Packed(sgemm::PackedLinear),
    /// `[in, out]`, contiguous: the checkpoint's `[out, in]` transposed once at load, so
    /// the GEMM reads it row-major and need not repack it on every call (which cost more
    /// than the arithmetic for one short sentence).
    Float(Tensor),
    /// int8, after `quantize_q8` (the bias is folded into its output pass).
    Q8(q8::Q8Linear),
}

impl Dense {
    /// From a checkpoint-layout `[out, in]` weight and its `[out]` bias.
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let weights = if packed_kernels_for(&weight) {
            DenseWeights::Packed(sgemm::PackedLinear::new(&weight, &bias)?)
        } else {
            DenseWeights::Float(transpose(&weight)?)
        };
        Ok(Self { weights, bias })
    }

    /// `weight` `[out, in]` and `bias` `[out]` under `vb`, shapes checked.
    fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
        )
    }

    /// Replaces the f32 weight by its int8 form (the f32 copy is freed).
    fn quantize_q8(&mut self) -> Result<()> {
        let q = match &self.weights {
            DenseWeights::Packed(p) => q8::Q8Linear::new(&p.weight_t()?, &self.bias)?,
            DenseWeights::Float(w) => q8::Q8Linear::new(w, &self.bias)?,
            DenseWeights::Q8(_) => return Ok(()),
        };
        self.weights = DenseWeights::Q8(q);
        Ok(())
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_then(x, Then::Nothing)
    }

    /// The packed weight, where the layer runs on the packed kernel.
    fn packed(&self) -> Option<&sgemm::PackedLinear> {
        match &self.weights {
            DenseWeights::Packed(p) => Some(p),
            _ => None,
        }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]` where only the first `lead` outputs of
    /// the flattened rows `rows` and the outputs from `lead` on of every row are asked
    /// for: on the packed kernel the rest is not computed (it holds zeros); otherwise
    /// every output is.
    fn forward_lead_for_rows(&self, x: &Tensor, lead: usize, rows: &[usize]) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        match &self.weights {
            DenseWeights::Packed(p) => Ok(p
                .forward_lead_for_rows(&x.reshape((b * t, i))?, lead, rows)?
                .reshape((b, t, ()))?),
            _ => self.forward(x),
        }
    }

    /// The layer, then `then`: a residual or exact GELU in the packed kernel's output
    /// pass, anything else as separate ops.
    fn forward_then(&self, x: &Tensor, then: Then) -> Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let x = x.reshape((b * t, i))?;
        let y = match &self.weights {
            DenseWeights::Packed(p) => {
                let y = match then {
                    Then::Residual(r) => {
                        let r = r.reshape((b * t, ()))?;
                        p.forward(&x, sgemm::Epilogue::BiasResidual(&r))?
                    }
                    Then::Activation(HiddenAct::GeluErf) => {
                        p.forward(&x, sgemm::Epilogue::BiasGelu)?
                    }
                    _ => then.apply(p.forward(&x, sgemm::Epilogue::Bias)?)?,
                };
                return Ok(y.reshape((b, t, ()))?);
            }
            DenseWeights::Float(w) => x.matmul(w)?.broadcast_add(&self.bias)?,
            DenseWeights::Q8(q) => q.forward(&x.contiguous()?)?,
        };
        Ok(then.apply(y)?.reshape((b, t, ()))?)
    }
}

/// What follows a dense layer in BERT.
#[derive(Clone, Copy)]
pub(crate) enum Then<'a> {
    Nothing,
    /// The feed-forward activation.
    Activation(HiddenAct),
    /// A residual of the output's shape, added.
    Residual(&'a Tensor),
}

impl Then<'_> {
    /// As separate ops, on a dense layer's fresh `[rows, out]` output (nothing else
    /// holds it, so exact GELU may overwrite it: on the CPU in f32 it does, which saves
    /// the feed-forward's largest buffer).
    fn apply(self, y: Tensor) -> Result<Tensor> {
        Ok(match self {
            Then::Nothing => y,
            Then::Activation(HiddenAct::GeluErf) if cpu_f32(&y) && y.is_contiguous() => {
                ops::gelu_erf_in_place(&y)?;
                y
            }
            Then::Activation(HiddenAct::GeluErf) => ops::gelu_erf(&y)?,
            Then::Activation(HiddenAct::GeluTanh) => y.gelu()?,
            Then::Activation(HiddenAct::Relu) => y.relu()?,
            Then::Residual(r) => (y + r.reshape(((), r.dim(candle_core::D::Minus1)?))?)?,
        })
    }
}

/// Whether `t` is f32 on the CPU.
fn cpu_f32(t: &Tensor) -> bool {
    matches!(t.device(), candle_core::Device::Cpu) && t.dtype() == DType::F32
}

/// Whether work on `t` runs on the packed AVX-512 kernels (`sgemm`, `fused`): f32 on a
/// CPU that has them.
pub(crate) fn packed_kernels_for(t: &Tensor) -> bool {
    cpu_f32(t) && sgemm::available()
}

/// `[rows, cols]` -> `[cols, rows]`, contiguous. On the CPU in f32: groups of 16 output
/// rows in parallel, each reading one cache line of every input row (candle's generic
/// strided copy took most of bert-base's load time).
fn transpose(w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;

    if !(matches!(w.device(), candle_core::Device::Cpu) && w.dtype() == DType::F32) {
        return Ok(w.t()?.contiguous()?);
    }
    const GROUP: usize = 16;
    let (rows, cols) = w.dims2()?;
    let src = w.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; rows * cols];
    dst.par_chunks_mut(GROUP * rows)
        .enumerate()
        .for_each(|(g, out)| {
            let c0 = g * GROUP;
            let width = out.len() / rows;
            for r in 0..rows {
                let line = &src[r * cols + c0..r * cols + c0 + width];
                for (j, &v) in line.iter().enumerate() {
                    out[j * rows + r] = v;
                }
            }
        });
    Ok(Tensor::from_vec(dst, (cols, rows), w.device())?)
}

/// A LayerNorm stored as `weight`/`bias` or, in old TensorFlow ports, `gamma`/`beta`.
fn layer_norm(vb: VarBuilder, cfg: &Config) -> Result<ops::LayerNorm> {
    let h = cfg.hidden_size;
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        (vb.get(h, "weight")?, vb.get(h, "bias")?)
    } else {
        (vb.get(h, "gamma")?, vb.get(h, "beta")?)
    };
    Ok(ops::LayerNorm::new(w, b, cfg.layer_norm_eps))
}
