//! The encoder stack BERT's descendants share: layers of self-attention and a
//! feed-forward block, each closed by a residual and a LayerNorm ("post-norm"). Families
//! differ in their tensor names (`LayerNames`) and in their attention (scaled dot-product,
//! or DeBERTa's disentangled one); the wiring is the same, so it is written once.

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::classifier::{Batch, Classifier, Output};
use super::config::Config;
use super::head::FirstTokenHead;
use crate::layers::{
    Activation, DisentangledAttention, Embeddings, LayerNorm, Linear, Loader, Positions, Queries,
    RowLayout, SelfAttention, Sequences,
};

/// Where a layer's tensors live, relative to the layer (`encoder.layer.N` or
/// `transformer.layer.N`).
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub output_norm: &'static str,
}

/// BERT's names, which RoBERTa, ELECTRA and DeBERTa keep (DeBERTa's projections are
/// `query_proj`, `key_proj`, `value_proj`, read by its attention).
pub const BERT_NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

/// A layer's attention.
pub enum Attention {
    /// Scaled dot-product attention over absolute positions.
    Scaled(SelfAttention),
    /// DeBERTa's content and relative-position scores.
    Disentangled(DisentangledAttention),
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        seqs: &Sequences,
        queries: Queries,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            Self::Scaled(a) => a.forward(x, seqs, queries, keep_probs),
            Self::Disentangled(a) => a.forward(x, seqs, keep_probs),
        }
    }

    fn projections_mut(&mut self) -> &mut Linear {
        match self {
            Self::Scaled(a) => a.projections_mut(),
            Self::Disentangled(a) => a.projections_mut(),
        }
    }
}

/// One post-norm layer.
pub struct Layer {
    attention: Attention,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    act: Activation,
    output: Linear,
    output_norm: LayerNorm,
}

/// The stack of layers.
pub struct Encoder {
    layers: Vec<Layer>,
    layout: RowLayout,
    /// The last layer may run for the first token alone: its attention is scaled
    /// dot-product (DeBERTa's relative scores are computed for whole sequences).
    first_token_last: bool,
}

impl Encoder {
    /// `cfg.num_layers` layers under `vb` (`vb.pp(i)` each), with scaled dot-product
    /// attention.
    pub fn load(vb: &Loader, cfg: &Config, names: &LayerNames) -> Result<Self> {
        Self::load_with(vb, cfg, names, |vb, last| {
            Ok(Attention::Scaled(SelfAttention::load(
                &vb.pp(names.query),
                &vb.pp(names.key),
                &vb.pp(names.value),
                cfg.hidden_size,
                cfg.num_heads,
                last,
            )?))
        })
    }

    /// As `load`, the attention of each layer built by `attention(layer_vb, is_last)`.
    pub fn load_with(
        vb: &Loader,
        cfg: &Config,
        names: &LayerNames,
        attention: impl Fn(&Loader, bool) -> Result<Attention>,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        // A config that names more layers than the checkpoint has: said as such, not as
        // the first tensor that is missing.
        if let Some(missing) = (0..cfg.num_layers).find(|&i| {
            !vb.pp(i)
                .pp(names.attention_output)
                .contains_tensor("weight")
        }) {
            if missing > 0 {
                anyhow::bail!(
                    "config.json says num_hidden_layers {} but the checkpoint has only {missing} layers; \
                     the config does not belong to these weights",
                    cfg.num_layers
                );
            }
        }
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let vb = vb.pp(i);
                Ok(Layer {
                    attention: attention(&vb, i + 1 == cfg.num_layers)?,
                    attention_output: Linear::load(&vb.pp(names.attention_output), h, h)?,
                    attention_norm: LayerNorm::load(&vb.pp(names.attention_norm), h, eps)?,
                    intermediate: Linear::load(
                        &vb.pp(names.intermediate),
                        h,
                        cfg.intermediate_size,
                    )?,
                    act: cfg.hidden_act,
                    output: Linear::load(&vb.pp(names.output), cfg.intermediate_size, h)?,
                    output_norm: LayerNorm::load(&vb.pp(names.output_norm), h, eps)?,
                })
            })
            .collect::<Result<Vec<Layer>>>()?;
        // A config that names fewer layers than the checkpoint has would silently run a
        // truncated model.
        let extra = vb.pp(cfg.num_layers).pp(names.attention_output);
        if extra.contains_tensor("weight") {
            anyhow::bail!(
                "config.json says num_hidden_layers {} but the checkpoint has more layers (it has layer {}); \
                 the config does not belong to these weights",
                cfg.num_layers,
                cfg.num_layers
            );
        }
        let first_token_last = !layers.is_empty()
            && layers
                .iter()
                .all(|l| matches!(l.attention, Attention::Scaled(_)));
        Ok(Self {
            layers,
            layout: RowLayout::of(vb),
            first_token_last,
        })
    }

    /// The stack, for a model that reads every token's final state (an encoder-decoder):
    /// the last layer then always runs for every token.
    pub fn every_token(mut self) -> Self {
        self.first_token_last = false;
        self
    }

    /// Runs the stack on the embeddings `x` (`[batch, seq, hidden]`, `mask` 1 for real
    /// tokens). Returns hidden states whose `[:, 0]` is each sequence's first token
    /// (`[batch, seq, hidden]`, or `[batch, 1, hidden]` when only that was computed) and,
    /// when `keep_attention`, every layer's probabilities.
    pub fn forward(
        &self,
        x: Tensor,
        mask: &Tensor,
        keep_attention: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        // The heads read only the first token, so the last layer skips the other tokens
        // unless their attention is wanted.
        let first_only = self.first_token_last && !keep_attention;
        let (mut x, seqs) = Sequences::lay_out(x, mask, self.layout, first_only)?;
        let mut attentions = Vec::new();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let queries = if first_only && i == last {
                Queries::First
            } else {
                Queries::All
            };
            let (next, probs) = layer.forward(x, &seqs, queries, keep_attention)?;
            attentions.extend(probs);
            x = next;
        }
        Ok((x, attentions))
    }

    /// The dense layers `--quantize q8` makes int8: those of every layer but the last.
    /// The last one runs on the first token alone for classification, so beyond its keys
    /// and values it costs next to nothing, yet its rounding moved the scores most: on
    /// SST-2 dev with the MiniLM fixture, keeping it f32 took label flips against f32 from
    /// 15 to 8 of 872 for 4% more time.
    fn int8_linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        let quantized = self.layers.len().saturating_sub(1);
        self.layers.iter_mut().take(quantized).flat_map(|layer| {
            [
                layer.attention.projections_mut(),
                &mut layer.attention_output,
                &mut layer.intermediate,
                &mut layer.output,
            ]
        })
    }

    /// Whether `forward` without attention lays each text's real tokens back to back:
    /// on the kernels, when the last layer may run for the first token alone (the rows
    /// then need not stay in place).
    pub fn skips_padding(&self) -> bool {
        Sequences::drops_padding(self.layout, self.first_token_last)
    }

    /// Has the layers `quantize_q8` converts record the range of their inputs from now
    /// on: a forward pass over a few texts then calibrates them.
    pub fn record_input_ranges(&mut self) {
        self.int8_linears().for_each(Linear::record_input_range);
    }

    /// Int8 dense layers in every layer but the last, balanced with the input ranges
    /// recorded, if any.
    pub fn quantize_q8(&mut self) -> Result<()> {
        self.int8_linears().try_for_each(Linear::quantize_q8)
    }
}

impl Layer {
    /// One layer on `x` (laid out as `seqs` says), for `queries`; returns its output and,
    /// when `keep_probs`, the attention probabilities.
    fn forward(
        &self,
        x: Tensor,
        seqs: &Sequences,
        queries: Queries,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (attended, probs) = {
            let (context, probs) = self.attention.forward(&x, seqs, queries, keep_probs)?;
            let residual = seqs.queried(&x, queries)?;
            let out = self
                .attention_output
                .forward_residual(&context, &residual)?;
            (self.attention_norm.forward_fresh(out)?, probs)
        };
        // The layer's input is freed before the feed-forward allocates (peak memory).
        drop(x);
        let up = self.intermediate.forward_act(&attended, self.act)?;
        let out = self.output.forward_residual(&up, &attended)?;
        Ok((self.output_norm.forward_fresh(out)?, probs))
    }
}

/// `embeddings`: `word_embeddings` + `token_type_embeddings` (when the family has
/// them) + `position_embeddings`, then `LayerNorm`, all `width` wide (BERT, RoBERTa,
/// ELECTRA, DistilBERT).
pub struct NormedEmbeddings {
    sum: Embeddings,
    norm: LayerNorm,
}

impl NormedEmbeddings {
    /// `token_types`: the family has a token-type table (`cfg.type_vocab_size` rows).
    pub fn load(
        vb: &Loader,
        cfg: &Config,
        width: usize,
        positions: Positions,
        token_types: bool,
    ) -> Result<Self> {
        let table = |name: &str, rows: usize| vb.pp(name).get((rows, width), "weight");
        Ok(Self {
            sum: Embeddings::new(
                table("word_embeddings", cfg.vocab_size)?,
                Some((
                    table("position_embeddings", cfg.max_position_embeddings)?,
                    positions,
                )),
                token_types
                    .then(|| table("token_type_embeddings", cfg.type_vocab_size))
                    .transpose()?,
                vb,
            )?,
            norm: LayerNorm::load(&vb.pp("LayerNorm"), width, cfg.layer_norm_eps)?,
        })
    }

    /// `ids` and `type_ids` are `[batch, seq]`; returns `[batch, seq, width]`.
    pub fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        self.norm.forward_fresh(self.sum.forward(ids, type_ids)?)
    }
}

/// A family's embeddings: token ids in, `[batch, seq, hidden]` out.
pub trait Embed: Send + Sync {
    /// `ids` and `type_ids` are the batch's `[batch, seq]` u32 tensors.
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor>;
}

impl Embed for NormedEmbeddings {
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        NormedEmbeddings::forward(self, ids, type_ids)
    }
}

/// `XForSequenceClassification` for every supported family: embeddings, the encoder
/// stack, and a first-token head. The family files build one with their own names.
pub struct SequenceClassifier<E> {
    pub embeddings: E,
    pub encoder: Encoder,
    pub head: FirstTokenHead,
}

impl<E: Embed> Classifier for SequenceClassifier<E> {
    fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        let (x, attentions) = self.encoder.forward(x, &batch.mask, keep_attention)?;
        let logits = self.head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }

    fn num_labels(&self) -> usize {
        self.head.num_labels()
    }

    fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    fn skips_padding(&self) -> bool {
        self.encoder.skips_padding()
    }

    fn record_input_ranges(&mut self) {
        self.encoder.record_input_ranges()
    }

    fn quantize_q8(&mut self) -> Result<()> {
        self.encoder.quantize_q8()
    }
}

/// Where the encoder's tensors live: under `prefix.` (`bert.`, `roberta.`, ...) as
/// `XForSequenceClassification` saves them, or at the top level as the bare model saves
/// them.
pub fn encoder_root<'a>(vb: &Loader<'a>, prefix: &str, cfg: &Config) -> Result<Loader<'a>> {
    let probe = "embeddings.word_embeddings.weight";
    if vb.contains_tensor(&format!("{prefix}.{probe}")) {
        Ok(vb.pp(prefix))
    } else if vb.contains_tensor(probe) {
        Ok(vb.clone())
    } else {
        let assumed = if cfg.model_type_assumed {
            "; config.json names no model_type, so BERT was assumed: add the right one (such as \"distilbert\" or \"roberta\")"
        } else {
            ""
        };
        anyhow::bail!(
            "no {} encoder weights: expected tensor {probe} (with or without the \"{prefix}.\" prefix){assumed}",
            cfg.family_name
        )
    }
}
