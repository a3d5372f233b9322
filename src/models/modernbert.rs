//! ModernBERT for sequence classification (`modeling_modernbert.py`): token embeddings
//! and a LayerNorm (no positions), pre-norm layers whose attention turns Q and K by
//! rotary positions and sees every token on global layers (every
//! `global_attn_every_n_layers`-th, layer 0 included) or a window of `local_attention`
//! tokens elsewhere, a GeGLU feed-forward, `final_norm`, then a head on the mean of the
//! real tokens or on `[CLS]`: `head.dense` + `classifier_activation` + `head.norm` +
//! `classifier`. Details pinned by the fixture: docs/models.md.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::classifier::{Batch, Classifier, HeadPolicy, Output};
use super::config::{parse_act, Config, Defaults};
use super::family::Family;
use super::head::{refuse_bare_encoder, Seeder};
use crate::layers::{
    padding_bias, Activation, Attend, Embeddings, LayerNorm, Linear, Loader, Rotary, Visibility,
};

/// `modernbert`.
pub const FAMILY: Family = Family {
    model_types: &[("modernbert", "ModernBERT")],
    config: Defaults {
        type_vocab_size: 0,
        layer_norm_eps: 1e-5,
        pad_token_id: 50283,
        renames: &[
            ("hidden_activation", "hidden_act"),
            ("norm_eps", "layer_norm_eps"),
        ],
        ..Defaults::BERT
    },
    check: |cfg| Settings::of(cfg).map(drop),
    head: "classifier",
    load: |ld, cfg, policy| Ok(Box::new(load(ld, cfg, policy)?) as Box<dyn Classifier>),
};

/// The fields of `config.json` only ModernBERT reads, with its defaults. transformers 5
/// writes the layer kinds as `layer_types` and the thetas under `rope_parameters`; the
/// configs on the Hub use the older keys. Both are read.
#[derive(Debug, Deserialize)]
struct Fields {
    #[serde(default = "every_third")]
    global_attn_every_n_layers: usize,
    #[serde(default = "window_128")]
    local_attention: usize,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
    #[serde(default = "cls")]
    classifier_pooling: String,
    #[serde(default = "gelu")]
    classifier_activation: String,
}

fn every_third() -> usize {
    3
}
fn window_128() -> usize {
    128
}
fn cls() -> String {
    "cls".into()
}
fn gelu() -> String {
    "gelu".into()
}

/// How the head reads the encoder's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    /// The first token (`[CLS]`).
    Cls,
    /// The mean of the real tokens.
    Mean,
}

/// ModernBERT's own settings, validated.
struct Settings {
    /// Per layer: whether it attends globally.
    global: Vec<bool>,
    global_theta: f64,
    local_theta: f64,
    /// Keys a local layer's query sees either side.
    half_window: usize,
    attention_bias: bool,
    mlp_bias: bool,
    norm_bias: bool,
    classifier_bias: bool,
    pooling: Pooling,
    classifier_act: Activation,
}

impl Settings {
    fn of(cfg: &Config) -> Result<Self> {
        let f: Fields = cfg.fields()?;
        let n = cfg.num_layers;
        let global = match &f.layer_types {
            Some(types) => {
                if types.len() != n {
                    bail!(
                        "layer_types names {} layers but num_hidden_layers is {n}",
                        types.len()
                    );
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(true),
                        "sliding_attention" => Ok(false),
                        other => bail!(
                            "layer_types entry {other:?} is not supported; ModernBERT layers are \
                             \"full_attention\" or \"sliding_attention\""
                        ),
                    })
                    .collect::<Result<Vec<bool>>>()?
            }
            None => {
                if f.global_attn_every_n_layers == 0 {
                    bail!("global_attn_every_n_layers 0 cannot be right");
                }
                (0..n)
                    .map(|i| i % f.global_attn_every_n_layers == 0)
                    .collect()
            }
        };
        let theta = |kind: &str, old: Option<f64>, default: f64| -> Result<f64> {
            let nested = f.rope_parameters.as_ref().and_then(|p| p.get(kind));
            if let Some(rope_type) = nested
                .and_then(|p| p.get("rope_type"))
                .and_then(|t| t.as_str())
            {
                if rope_type != "default" {
                    bail!("rope_parameters.{kind}.rope_type {rope_type:?} is not supported; only \"default\" is");
                }
            }
            let theta = nested
                .and_then(|p| p.get("rope_theta"))
                .and_then(|t| t.as_f64())
                .or(old)
                .unwrap_or(default);
            if !(theta > 1.0 && theta.is_finite()) {
                bail!(
                    "the rotary base (rope_theta) of {kind} layers is {theta}; it must be above 1"
                );
            }
            Ok(theta)
        };
        if f.local_attention == 0 || !f.local_attention.is_multiple_of(2) {
            bail!(
                "local_attention {} cannot be right: it must be an even window (ModernBERT uses 128)",
                f.local_attention
            );
        }
        if !cfg.head_dim().is_multiple_of(2) {
            bail!(
                "heads {} wide cannot take rotary positions: hidden_size / num_attention_heads must be even",
                cfg.head_dim()
            );
        }
        let pooling = match f.classifier_pooling.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => bail!("classifier_pooling {other:?} is not supported; ModernBERT pools with \"cls\" or \"mean\""),
        };
        Ok(Self {
            global,
            global_theta: theta("full_attention", f.global_rope_theta, 160_000.0)?,
            local_theta: theta("sliding_attention", f.local_rope_theta, 10_000.0)?,
            half_window: f.local_attention / 2,
            attention_bias: f.attention_bias,
            mlp_bias: f.mlp_bias,
            norm_bias: f.norm_bias,
            classifier_bias: f.classifier_bias,
            pooling,
            classifier_act: parse_act(&f.classifier_activation)?,
        })
    }
}

/// `ModernBertForSequenceClassification`.
pub struct ModernBertForSequenceClassification {
    embeddings: Embeddings,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    global_rope: Rotary,
    local_rope: Rotary,
    pooling: Pooling,
    head: Head,
}

/// One pre-norm layer.
struct Layer {
    /// `None` on layer 0, whose `attn_norm` is an identity.
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    attend: Attend,
    visible: Visibility,
    global: bool,
    wo: Linear,
    mlp_norm: LayerNorm,
    /// `Wi`'s first half (through the activation) and second half (the gate), split at
    /// load so the activation runs as the first half's product is stored.
    wi_input: Linear,
    wi_gate: Linear,
    act: Activation,
    mlp_wo: Linear,
}

/// `head.dense` + activation + `head.norm`, then `classifier`.
struct Head {
    dense: Linear,
    act: Activation,
    norm: LayerNorm,
    classifier: Linear,
    num_labels: usize,
    trained: bool,
}

/// Builds the model from a checkpoint (`model.` prefix as the task models save it, or
/// none as the bare model does).
pub fn load(
    vb: Loader,
    cfg: &Config,
    policy: HeadPolicy,
) -> Result<ModernBertForSequenceClassification> {
    let s = Settings::of(cfg)?;
    let probe = "embeddings.tok_embeddings.weight";
    let model = if vb.contains_tensor(&format!("model.{probe}")) {
        vb.pp("model")
    } else if vb.contains_tensor(probe) {
        vb.clone()
    } else {
        bail!("no ModernBERT encoder weights: expected tensor {probe} (with or without the \"model.\" prefix)");
    };
    let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
    let norm = |ld: &Loader| LayerNorm::load_bias_if(ld, h, eps, s.norm_bias);
    let emb = model.pp("embeddings");
    let embeddings = Embeddings::new(
        emb.pp("tok_embeddings")
            .get((cfg.vocab_size, h), "weight")?,
        None,
        None,
        &emb,
    )?;
    let embedding_norm = norm(&emb.pp("norm"))?;
    let layers_ld = model.pp("layers");
    if layers_ld
        .pp(cfg.num_layers)
        .contains_tensor("attn.Wqkv.weight")
    {
        bail!(
            "config.json says num_hidden_layers {} but the checkpoint has more layers; \
             the config does not belong to these weights",
            cfg.num_layers
        );
    }
    let inter = cfg.intermediate_size;
    let layers = (0..cfg.num_layers)
        .map(|i| {
            let ld = layers_ld.pp(i);
            let attn = ld.pp("attn");
            let wi = ld.pp("mlp").pp("Wi");
            let wi_w = wi.get((2 * inter, h), "weight")?;
            let wi_b = if s.mlp_bias {
                wi.get(2 * inter, "bias")?
            } else {
                Tensor::zeros(2 * inter, wi_w.dtype(), wi_w.device())?
            };
            let half = |t: &Tensor, at: usize| t.narrow(0, at, inter)?.contiguous();
            let global = s.global[i];
            Ok(Layer {
                attn_norm: if ld.contains_tensor("attn_norm.weight") {
                    Some(norm(&ld.pp("attn_norm"))?)
                } else if i == 0 {
                    None
                } else {
                    bail!(
                        "no tensor {}.attn_norm.weight: only layer 0 goes without it",
                        ld.prefix()
                    );
                },
                wqkv: Linear::load_bias_if(&attn.pp("Wqkv"), h, 3 * h, s.attention_bias)?,
                attend: Attend::new(h, cfg.num_heads, &ld),
                visible: if global {
                    Visibility::All
                } else {
                    Visibility::Window {
                        half: s.half_window,
                    }
                },
                global,
                wo: Linear::load_bias_if(&attn.pp("Wo"), h, h, s.attention_bias)?,
                mlp_norm: norm(&ld.pp("mlp_norm"))?,
                wi_input: Linear::new(half(&wi_w, 0)?, half(&wi_b, 0)?, &wi)?,
                wi_gate: Linear::new(half(&wi_w, inter)?, half(&wi_b, inter)?, &wi)?,
                act: cfg.hidden_act,
                mlp_wo: Linear::load_bias_if(&ld.pp("mlp").pp("Wo"), inter, h, s.mlp_bias)?,
            })
        })
        .collect::<Result<Vec<Layer>>>()?;
    let final_norm = norm(&model.pp("final_norm"))?;
    let rope = |theta| {
        Rotary::new(
            theta,
            cfg.head_dim(),
            cfg.max_tokens(),
            vb.device(),
            vb.dtype(),
        )
    };
    let head = load_head(&vb, cfg, &s, policy)?;
    Ok(ModernBertForSequenceClassification {
        embeddings,
        embedding_norm,
        layers,
        final_norm,
        global_rope: rope(s.global_theta)?,
        local_rope: rope(s.local_theta)?,
        pooling: s.pooling,
        head,
    })
}

/// The head: `head.dense`, `head.norm` and `classifier` from the checkpoint, or (a bare
/// or masked-LM checkpoint, when the policy allows) a seeded classifier.
fn load_head(vb: &Loader, cfg: &Config, s: &Settings, policy: HeadPolicy) -> Result<Head> {
    let h = cfg.hidden_size;
    let head = vb.pp("head");
    let dense = Linear::load_bias_if(&head.pp("dense"), h, h, s.classifier_bias)?;
    let norm = LayerNorm::load_bias_if(&head.pp("norm"), h, cfg.layer_norm_eps, s.norm_bias)?;
    let out = vb.pp(FAMILY.head);
    let (classifier, num_labels, trained) = if out.contains_tensor("weight") {
        let w = out.get_unchecked("weight")?;
        let (labels, width) = w.dims2()?;
        if width != h || labels == 0 {
            bail!("tensor classifier.weight has shape [{labels}, {width}], expected [num_labels, {h}]");
        }
        (
            Linear::new(w, out.get(labels, "bias")?, &out)?,
            labels,
            true,
        )
    } else if policy.allow_untrained {
        let n = policy.num_labels.max(1);
        let layer = Seeder::default().linear(h, n, cfg.initializer_range, &out)?;
        (layer, n, false)
    } else {
        return Err(refuse_bare_encoder());
    };
    Ok(Head {
        dense,
        act: s.classifier_act,
        norm,
        classifier,
        num_labels,
        trained,
    })
}

impl Layer {
    fn forward(
        &self,
        x: Tensor,
        padding: &Tensor,
        rope: &Rotary,
        keep_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(&x)?,
            None => x.clone(),
        };
        let qkv = self.wqkv.forward(&normed)?;
        drop(normed);
        let (ctx, probs) =
            self.attend
                .stacked(&qkv, padding, self.visible, Some(rope), keep_probs)?;
        drop(qkv);
        let x = self.wo.forward_residual(&ctx, &x)?;
        let normed = self.mlp_norm.forward(&x)?;
        let input = self.wi_input.forward_act(&normed, self.act)?;
        let gated = (input * self.wi_gate.forward(&normed)?)?;
        drop(normed);
        Ok((self.mlp_wo.forward_residual(&gated, &x)?, probs))
    }

    fn linears(&mut self) -> [&mut Linear; 5] {
        [
            &mut self.wqkv,
            &mut self.wo,
            &mut self.wi_input,
            &mut self.wi_gate,
            &mut self.mlp_wo,
        ]
    }
}

impl Classifier for ModernBertForSequenceClassification {
    fn forward(&self, batch: &Batch, keep_attention: bool) -> Result<Output> {
        let x = self.embeddings.forward(&batch.ids, &batch.type_ids)?;
        let mut x = self.embedding_norm.forward_fresh(x)?;
        let padding = padding_bias(&batch.mask)?;
        let mut attentions = Vec::new();
        for layer in &self.layers {
            let rope = if layer.global {
                &self.global_rope
            } else {
                &self.local_rope
            };
            let (next, probs) = layer.forward(x, &padding, rope, keep_attention)?;
            attentions.extend(probs);
            x = next;
        }
        let x = self.final_norm.forward_fresh(x)?;
        let pooled = match self.pooling {
            Pooling::Cls => x.narrow(1, 0, 1)?.contiguous()?,
            Pooling::Mean => {
                let mask = batch.mask.to_dtype(x.dtype())?.unsqueeze(2)?;
                let sum = x.broadcast_mul(&mask)?.sum_keepdim(1)?;
                sum.broadcast_div(&mask.sum_keepdim(1)?)?
            }
        };
        let head = &self.head;
        let pooled = head.dense.forward_act(&pooled, head.act)?;
        let pooled = head.norm.forward_fresh(pooled)?;
        let logits = head.classifier.forward(&pooled)?.squeeze(1)?;
        Ok(Output {
            logits: logits.to_dtype(DType::F32)?,
            attentions,
        })
    }

    fn num_labels(&self) -> usize {
        self.head.num_labels
    }

    fn head_is_trained(&self) -> bool {
        self.head.trained
    }

    fn skips_padding(&self) -> bool {
        false
    }

    fn record_input_ranges(&mut self) {
        for layer in &mut self.layers {
            layer
                .linears()
                .into_iter()
                .for_each(Linear::record_input_range);
        }
    }

    fn quantize_q8(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer
                .linears()
                .into_iter()
                .try_for_each(Linear::quantize_q8)?;
        }
        Ok(())
    }
}
