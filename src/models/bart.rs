//! BART for sequence classification (`modeling_bart.py`), as `facebook/bart-large-mnli`
//! runs zero-shot: an encoder of BERT's post-norm layers over the text, a causal decoder
//! over the same text shifted right (starting at `decoder_start_token_id`) that also
//! attends to the encoder, and `classification_head` (dense + tanh + `out_proj`) on the
//! decoder's state at each row's last `</s>`. Both stacks embed with the shared token
//! table, their own learned positions (offset by 2) and `layernorm_embedding`.
//! Details pinned by the fixture: docs/models.md.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::classifier::{Batch, Classifier, HeadPolicy, Output};
use super::config::{Config, Defaults};
use super::encoder::{Attention, Encoder, LayerNames};
use super::family::Family;
use super::head::{FirstTokenHead, HeadSpec};
use crate::layers::{
    padding_bias, Activation, Attend, Embeddings, LayerNorm, Linear, Loader, Positions,
    SelfAttention, Visibility,
};

/// `bart`.
pub const FAMILY: Family = Family {
    model_types: &[("bart", "BART")],
    config: Defaults {
        type_vocab_size: 0,
        // nn.LayerNorm's default; BART's config has no eps.
        layer_norm_eps: 1e-5,
        eps_fixed: true,
        pad_token_id: 1,
        renames: &[
            ("d_model", "hidden_size"),
            ("encoder_layers", "num_hidden_layers"),
            ("encoder_attention_heads", "num_attention_heads"),
            ("encoder_ffn_dim", "intermediate_size"),
            ("activation_function", "hidden_act"),
            ("init_std", "initializer_range"),
        ],
        ..Defaults::BERT
    },
    check: |cfg| Decoder::fields(cfg).map(drop),
    head: "classification_head.out_proj",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// The encoder's layers under BART's names.
const ENCODER_NAMES: LayerNames = LayerNames {
    query: "self_attn.q_proj",
    key: "self_attn.k_proj",
    value: "self_attn.v_proj",
    attention_output: "self_attn.out_proj",
    attention_norm: "self_attn_layer_norm",
    intermediate: "fc1",
    output: "fc2",
    output_norm: "final_layer_norm",
};

/// The fields of `config.json` only BART reads, with its defaults.
#[derive(Debug, Deserialize)]
struct Fields {
    #[serde(default = "twelve")]
    decoder_layers: usize,
    #[serde(default = "sixteen")]
    decoder_attention_heads: usize,
    #[serde(default = "ffn_4096")]
    decoder_ffn_dim: usize,
    #[serde(default)]
    scale_embedding: bool,
    #[serde(default = "two")]
    decoder_start_token_id: u32,
    #[serde(default = "two")]
    eos_token_id: u32,
    #[serde(default)]
    normalize_before: bool,
    #[serde(default)]
    add_final_layer_norm: bool,
}

fn twelve() -> usize {
    12
}
fn sixteen() -> usize {
    16
}
fn ffn_4096() -> usize {
    4096
}
fn two() -> u32 {
    2
}

/// `BartForSequenceClassification`.
pub struct BartForSequenceClassification {
    encoder_embeddings: Embeddings,
    encoder_norm: LayerNorm,
    encoder: Encoder,
    decoder: Decoder,
    head: FirstTokenHead,
    eos: u32,
}

/// The decoder stack and its embeddings.
struct Decoder {
    embeddings: Embeddings,
    norm: LayerNorm,
    layers: Vec<DecoderLayer>,
    start: u32,
}

/// One post-norm decoder layer: causal self-attention, cross-attention to the encoder,
/// then the feed-forward, each closed by a residual and a LayerNorm.
struct DecoderLayer {
    /// `self_attn.{q,k,v}_proj` stacked.
    self_qkv: Linear,
    self_attend: Attend,
    self_out: Linear,
    self_norm: LayerNorm,
    cross_q: Linear,
    /// `encoder_attn.{k,v}_proj` stacked.
    cross_kv: Linear,
    cross_attend: Attend,
    cross_out: Linear,
    cross_norm: LayerNorm,
    fc1: Linear,
    act: Activation,
    fc2: Linear,
    final_norm: LayerNorm,
}

/// Builds the model from a checkpoint (`model.` prefix as the task models save it, or
/// none as the bare model does).
pub fn load(vb: Loader, cfg: &Config, policy: HeadPolicy) -> Result<BartForSequenceClassification> {
    let fields = Decoder::fields(cfg)?;
    let model = if vb.contains_tensor("model.shared.weight")
        || vb.contains_tensor("model.encoder.embed_tokens.weight")
    {
        vb.pp("model")
    } else if vb.contains_tensor("shared.weight")
        || vb.contains_tensor("encoder.embed_tokens.weight")
    {
        vb.clone()
    } else {
        bail!("no BART weights: expected tensor model.shared.weight (with or without the \"model.\" prefix)");
    };
    let h = cfg.hidden_size;
    // The token table both stacks share (tied: the stacks' own copies may be absent).
    let shared = if model.contains_tensor("shared.weight") {
        model.get((cfg.vocab_size, h), "shared.weight")?
    } else {
        model.get((cfg.vocab_size, h), "encoder.embed_tokens.weight")?
    };
    let shared = if fields.scale_embedding {
        (shared * (h as f64).sqrt())?
    } else {
        shared
    };
    let embeddings = |stack: &Loader| -> Result<(Embeddings, LayerNorm)> {
        let positions = stack
            .pp("embed_positions")
            .get((cfg.max_position_embeddings + 2, h), "weight")?
            .narrow(0, 2, cfg.max_position_embeddings)?
            .copy()?;
        Ok((
            Embeddings::new(
                shared.clone(),
                Some((positions, Positions::FromZero)),
                None,
                stack,
            )?,
            LayerNorm::load(&stack.pp("layernorm_embedding"), h, cfg.layer_norm_eps)?,
        ))
    };
    let enc = model.pp("encoder");
    let (encoder_embeddings, encoder_norm) = embeddings(&enc)?;
    // The decoder reads every encoder state, so no layer runs for the first token alone.
    let encoder = Encoder::load_with(&enc.pp("layers"), cfg, &ENCODER_NAMES, |ld, _| {
        Ok(Attention::Scaled(SelfAttention::load(
            &ld.pp(ENCODER_NAMES.query),
            &ld.pp(ENCODER_NAMES.key),
            &ld.pp(ENCODER_NAMES.value),
            h,
            cfg.num_heads,
            false,
        )?))
    })?
    .every_token();
    let dec = model.pp("decoder");
    let (dec_embeddings, dec_norm) = embeddings(&dec)?;
    let decoder = Decoder {
        embeddings: dec_embeddings,
        norm: dec_norm,
        layers: Decoder::load_layers(&dec.pp("layers"), cfg, &fields)?,
        start: fields.decoder_start_token_id,
    };
    let head = FirstTokenHead::load(
        HeadSpec {
            dense: vb.pp("classification_head.dense"),
            out: vb.pp(FAMILY.head),
            width: h,
            act: Activation::Tanh,
        },
        cfg,
        policy,
    )?;
    Ok(BartForSequenceClassification {
        encoder_embeddings,
        encoder_norm,
        encoder,
        decoder,
        head,
        eos: fields.eos_token_id,
    })
}

impl Decoder {
    /// BART's own fields, validated.
    fn fields(cfg: &Config) -> Result<Fields> {
        let f: Fields = cfg.fields()?;
        if f.normalize_before || f.add_final_layer_norm {
            bail!(
                "normalize_before / add_final_layer_norm is set: this is a pre-norm variant (such as mBART), \
                 which bert-cli does not run; BART's layers are post-norm"
            );
        }
        if f.decoder_layers == 0 {
            bail!("decoder_layers 0 cannot be right");
        }
        if f.decoder_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(f.decoder_attention_heads)
        {
            bail!(
                "d_model {} is not divisible by decoder_attention_heads {}",
                cfg.hidden_size,
                f.decoder_attention_heads
            );
        }
        if f.decoder_ffn_dim == 0 {
            bail!("decoder_ffn_dim 0 cannot be right");
        }
        Ok(f)
    }

    fn load_layers(ld: &Loader, cfg: &Config, f: &Fields) -> Result<Vec<DecoderLayer>> {
        let (h, eps, ffn) = (cfg.hidden_size, cfg.layer_norm_eps, f.decoder_ffn_dim);
        if ld
            .pp(f.decoder_layers)
            .contains_tensor("self_attn.out_proj.weight")
        {
            bail!(
                "config.json says decoder_layers {} but the checkpoint has more; \
                 the config does not belong to these weights",
                f.decoder_layers
            );
        }
        let stacked = |ld: &Loader, names: &[&str]| -> Result<Linear> {
            let (mut w, mut b) = (Vec::new(), Vec::new());
            for name in names {
                w.push(ld.pp(name).get((h, h), "weight")?);
                b.push(ld.pp(name).get(h, "bias")?);
            }
            Linear::new(Tensor::cat(&w, 0)?, Tensor::cat(&b, 0)?, ld)
        };
        (0..f.decoder_layers)
            .map(|i| {
                let ld = ld.pp(i);
                let (sa, ca) = (ld.pp("self_attn"), ld.pp("encoder_attn"));
                Ok(DecoderLayer {
                    self_qkv: stacked(&sa, &["q_proj", "k_proj", "v_proj"])?,
                    self_attend: Attend::new(h, f.decoder_attention_heads, &ld),
                    self_out: Linear::load(&sa.pp("out_proj"), h, h)?,
                    self_norm: LayerNorm::load(&ld.pp("self_attn_layer_norm"), h, eps)?,
                    cross_q: Linear::load(&ca.pp("q_proj"), h, h)?,
                    cross_kv: stacked(&ca, &["k_proj", "v_proj"])?,
                    cross_attend: Attend::new(h, f.decoder_attention_heads, &ld),
                    cross_out: Linear::load(&ca.pp("out_proj"), h, h)?,
                    cross_norm: LayerNorm::load(&ld.pp("encoder_attn_layer_norm"), h, eps)?,
                    fc1: Linear::load(&ld.pp("fc1"), h, ffn)?,
                    act: cfg.hidden_act,
                    fc2: Linear::load(&ld.pp("fc2"), ffn, h)?,
                    final_norm: LayerNorm::load(&ld.pp("final_layer_norm"), h, eps)?,
                })
            })
            .collect()
    }

    /// The decoder's states for the input `ids` shifted right, attending to `memory`
    /// (the encoder's states, its padding masked by `memory_padding`).
    fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        memory: &Tensor,
        memory_padding: &Tensor,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let start = Tensor::full(self.start, (b, 1), ids.device())?;
        let shifted = Tensor::cat(&[&start, &ids.narrow(1, 0, t - 1)?], 1)?;
        let x = self.embeddings.forward(&shifted, type_ids)?;
        let mut x = self.norm.forward_fresh(x)?;
        // Right padding is hidden by the causal mask: a real token never sees a later one.
        let no_padding = Tensor::zeros((b, 1, 1, t), DType::F32, ids.device())?;
        for layer in &self.layers {
            x = layer.forward(x, &no_padding, memory, memory_padding)?;
        }
        Ok(x)
    }

    fn linears(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.self_qkv,
                &mut l.self_out,
                &mut l.cross_q,
                &mut l.cross_kv,
                &mut l.cross_out,
                &mut l.fc1,
                &mut l.fc2,
            ]
        })
    }
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor,
        no_padding: &Tensor,
        memory: &Tensor,
        memory_padding: &Tensor,
    ) -> Result<Tensor> {
        let qkv = self.self_qkv.forward(&x)?;
        let (ctx, _) =
            self.self_attend
                .stacked(&qkv, no_padding, Visibility::Causal, None, false)?;
        drop(qkv);
        let x = self
            .self_norm
            .forward_fresh(self.self_out.forward_residual(&ctx, &x)?)?;
        let q = self.cross_q.forward(&x)?;
        let kv = self.cross_kv.forward(memory)?;
        let (ctx, _) = self.cross_attend.cross(&q, &kv, memory_padding, false)?;
        drop((q, kv));
        let x = self
            .cross_norm
            .forward_fresh(self.cross_out.forward_residual(&ctx, &x)?)?;
        let up = self.fc1.forward_act(&x, self.act)?;
        self.final_norm
            .forward_fresh(self.fc2.forward_residual(&up, &x)?)
    }
}

impl BartForSequenceClassification {
    /// Each row's last `</s>` among its real tokens, as `[batch]` indices into the
    /// flattened `[batch * seq]` rows.
    fn last_eos(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let ids = batch.ids.flatten_all()?.to_vec1::<u32>()?;
        let mask = batch.mask.flatten_all()?.to_vec1::<u32>()?;
        let rows = (0..b)
            .map(|r| {
                (0..t)
                    .rev()
                    .find(|&j| mask[r * t + j] != 0 && ids[r * t + j] == self.eos)
                    .map(|j| (r * t + j) as u32)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "an input has no </s> (token id {}): BART's head reads the state at the last one, \
                             and this tokenizer did not add it; use the tokenizer that came with the model",
                            self.eos
                        )
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tensor::new(rows, batch.ids.device())?)
    }
}

impl Classifier for BartForSequenceClassification {
    fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let eos = self.last_eos(batch)?;
        let x = self
            .encoder_embeddings
            .forward(&batch.ids, &batch.type_ids)?;
        let x = self.encoder_norm.forward_fresh(x)?;
        let (memory, attentions) = self.encoder.forward(x, &batch.mask, keep_attention)?;
        let memory_padding = padding_bias(&batch.mask)?;
        let states = self
            .decoder
            .forward(&batch.ids, &batch.type_ids, &memory, &memory_padding)?;
        let (b, t, h) = states.dims3()?;
        let last = states
            .reshape((b * t, h))?
            .index_select(&eos, 0)?
            .reshape((b, 1, h))?;
        let logits = self.head.forward(&last)?.to_dtype(DType::F32)?;
        Ok(Output { logits, attentions })
    }

    fn num_labels(&self) -> usize {
        self.head.num_labels()
    }

    fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    fn skips_padding(&self) -> bool {
        false
    }

    fn record_input_ranges(&mut self) {
        self.encoder.record_input_ranges();
        self.decoder.linears().for_each(Linear::record_input_range);
    }

    fn quantize_q8(&mut self) -> Result<()> {
        self.encoder.quantize_q8()?;
        self.decoder.linears().try_for_each(Linear::quantize_q8)
    }
}
