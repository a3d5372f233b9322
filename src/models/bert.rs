//! BERT for sequence classification, as `modeling_bert.py` defines it: embeddings, a
//! stack of layers (self-attention, then a feed-forward block, each closed by a residual
//! and a LayerNorm), a pooler on `[CLS]` and a linear classifier. Weight names are the
//! checkpoint's own, with or without the `bert.` prefix, LayerNorms as `weight`/`bias`
//! or `gamma`/`beta`.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::head::{classifier_weight, refuse_bare_encoder, HeadPolicy, Seeder};
use super::{Batch, Classifier, Output};
use crate::layers::{
    Activation, Backend, Embeddings, LayerNorm, Linear, Queries, SelfAttention, Sequences,
};

/// `BertForSequenceClassification`.
pub struct BertForSequenceClassification {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    head: BertHead,
    backend: Backend,
}

/// `bert.embeddings`: word + token type + position, then LayerNorm.
struct BertEmbeddings {
    sum: Embeddings,
    norm: LayerNorm,
}

/// `bert.encoder.layer.N`.
struct BertLayer {
    /// `attention.self.{query,key,value}`.
    attention: SelfAttention,
    /// `attention.output.dense`.
    attention_output: Linear,
    /// `attention.output.LayerNorm`.
    attention_norm: LayerNorm,
    /// `intermediate.dense`.
    intermediate: Linear,
    act: Activation,
    /// `output.dense`.
    output: Linear,
    /// `output.LayerNorm`.
    output_norm: LayerNorm,
}

/// `bert.pooler.dense` (+ tanh) and `classifier`; `trained` is false when they were
/// seeded, not loaded.
struct BertHead {
    pooler: Linear,
    classifier: Linear,
    num_labels: usize,
    trained: bool,
}

impl BertForSequenceClassification {
    /// Builds the model from a checkpoint.
    pub fn load(
        vb: VarBuilder,
        cfg: &Config,
        policy: HeadPolicy,
        backend: Backend,
    ) -> Result<Self> {
        let probe = "embeddings.word_embeddings.weight";
        let bert = if vb.contains_tensor(&format!("bert.{probe}")) {
            vb.pp("bert")
        } else if vb.contains_tensor(probe) {
            vb.clone()
        } else {
            bail!("no BERT encoder weights: expected tensor {probe} (with or without the \"bert.\" prefix)");
        };
        // In checkpoint order: the large word table first, before the layers' load-time
        // buffers come and go (loaded after them, it could not reuse their freed memory:
        // 15 MiB more peak with MiniLM).
        let embeddings = BertEmbeddings::load(bert.pp("embeddings"), cfg, backend)?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let last = i + 1 == cfg.num_layers;
                BertLayer::load(bert.pp("encoder").pp("layer").pp(i), cfg, last, backend)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings,
            layers,
            head: BertHead::load(&vb, &bert, cfg, policy, backend)?,
            backend,
        })
    }
}

impl Classifier for BertForSequenceClassification {
    fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        // The head reads only [CLS], so the last layer skips the other tokens unless
        // their attention is wanted.
        let first_only = !keep_attention && !self.layers.is_empty();
        let (mut x, seqs) = Sequences::lay_out(x, &batch.mask, self.backend, first_only)?;
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
        let logits = self.head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }

    fn num_labels(&self) -> usize {
        self.head.num_labels
    }

    fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    /// Int8 dense layers in every layer but the last. The last one runs on `[CLS]` alone
    /// for classification, so beyond its keys and values it costs next to nothing, yet
    /// its rounding moved the scores most: on SST-2 dev with the MiniLM fixture, keeping
    /// it f32 took label flips against f32 from 15 to 8 of 872 for 4% more time.
    fn quantize_q8(&mut self) -> Result<()> {
        let quantized = self.layers.len().saturating_sub(1);
        for layer in self.layers.iter_mut().take(quantized) {
            layer.attention.quantize_q8()?;
            layer.attention_output.quantize_q8()?;
            layer.intermediate.quantize_q8()?;
            layer.output.quantize_q8()?;
        }
        Ok(())
    }
}

impl BertEmbeddings {
    fn load(vb: VarBuilder, cfg: &Config, backend: Backend) -> Result<Self> {
        let table = |name: &str, rows: usize| vb.pp(name).get((rows, cfg.hidden_size), "weight");
        Ok(Self {
            sum: Embeddings::new(
                table("word_embeddings", cfg.vocab_size)?,
                table("position_embeddings", cfg.max_position_embeddings)?,
                Some(table("token_type_embeddings", cfg.type_vocab_size)?),
                backend,
            )?,
            norm: LayerNorm::load(
                vb.pp("LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
                backend,
            )?,
        })
    }

    /// `ids` and `type_ids` are `[batch, seq]`; returns `[batch, seq, hidden]`.
    fn forward(&self, ids: &Tensor, type_ids: &Tensor) -> Result<Tensor> {
        self.norm.forward_fresh(self.sum.forward(ids, type_ids)?)
    }
}

impl BertLayer {
    /// `last`: the encoder's last layer (see `SelfAttention::load`).
    fn load(vb: VarBuilder, cfg: &Config, last: bool, backend: Backend) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attention = vb.pp("attention");
        let heads = attention.pp("self");
        Ok(Self {
            attention: SelfAttention::load(
                heads.pp("query"),
                heads.pp("key"),
                heads.pp("value"),
                h,
                cfg.num_heads,
                last,
                backend,
            )?,
            attention_output: Linear::load(attention.pp("output").pp("dense"), h, h, backend)?,
            attention_norm: LayerNorm::load(
                attention.pp("output").pp("LayerNorm"),
                h,
                eps,
                backend,
            )?,
            intermediate: Linear::load(
                vb.pp("intermediate").pp("dense"),
                h,
                cfg.intermediate_size,
                backend,
            )?,
            act: cfg.hidden_act,
            output: Linear::load(
                vb.pp("output").pp("dense"),
                cfg.intermediate_size,
                h,
                backend,
            )?,
            output_norm: LayerNorm::load(vb.pp("output").pp("LayerNorm"), h, eps, backend)?,
        })
    }

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

impl BertHead {
    /// `root` is the checkpoint's top level (where `classifier.*` lives); `bert` the
    /// subtree holding `pooler.*` (`bert.` or the top level).
    fn load(
        root: &VarBuilder,
        bert: &VarBuilder,
        cfg: &Config,
        policy: HeadPolicy,
        backend: Backend,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let has_pooler = bert.contains_tensor("pooler.dense.weight");
        let pooler = || Linear::load(bert.pp("pooler").pp("dense"), h, h, backend);
        if root.contains_tensor("classifier.weight") {
            if !has_pooler {
                bail!("the checkpoint has classifier.weight but no pooler.dense.weight; a BERT sequence classifier needs both");
            }
            let (w, num_labels) = classifier_weight(root, "classifier.weight", h)?;
            let bias = root.pp("classifier").get(num_labels, "bias")?;
            return Ok(Self {
                pooler: pooler()?,
                classifier: Linear::new(w, bias, backend)?,
                num_labels,
                trained: true,
            });
        }
        if !policy.allow_untrained {
            return Err(refuse_bare_encoder());
        }
        let mut seeder = Seeder::default();
        let std = cfg.initializer_range;
        let pooler = if has_pooler {
            pooler()?
        } else {
            seeder.linear(h, h, std, root, backend)?
        };
        let n = policy.num_labels.max(1);
        Ok(Self {
            pooler,
            classifier: seeder.linear(h, n, std, root, backend)?,
            num_labels: n,
            trained: false,
        })
    }

    /// `hidden` is the encoder's `[batch, seq, hidden]`; returns `[batch, num_labels]`
    /// logits from each sequence's first token.
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        // Contiguous: BLAS backends (MKL, Accelerate) need unit-stride rows.
        let cls = hidden.narrow(1, 0, 1)?.contiguous()?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        Ok(self.classifier.forward(&pooled)?.squeeze(1)?)
    }
}
