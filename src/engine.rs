//! A loaded classifier: tokenizer, model and label names, turning token ids into predictions.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::hub::ModelFiles;
use crate::layers::{Backend, Loader};
use crate::models::config::{labels_are_generic, Scoring};
use crate::models::HeadPolicy;
use crate::models::{Batch, Classifier, DEFAULT_MODEL};
use crate::tokenize::{Encoded, PairTruncation, TextTokenizer};
use crate::weights::open_weights;

/// The names the default model's generic `LABEL_n` stand for.
const DEFAULT_MODEL_LABELS: [&str; 2] = ["NEGATIVE", "POSITIVE"];

/// Choices that shape how a checkpoint is loaded.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Truncation length in tokens; `None` means the most the model reads.
    pub max_length: Option<usize>,
    /// Label names that replace generic `LABEL_n` ones.
    pub labels: Option<Vec<String>>,
    /// The flag that gave `labels`, for messages (`--labels` when not said).
    pub labels_flag: Option<&'static str>,
    /// Run a checkpoint that has no classifier with a seeded random head.
    pub allow_untrained_head: bool,
    /// Number format of weights and activations; `None` picks the device's default.
    pub dtype: Option<DType>,
    /// int8 encoder linear layers (`--quantize q8`); CPU and f32 only.
    pub quantize_q8: bool,
    /// How logits become scores; `None` follows the config (as transformers' pipeline).
    pub scoring: Option<Scoring>,
}

/// One classified input.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Raw classifier outputs.
    pub logits: Vec<f32>,
    /// Scores per label: softmax or sigmoid of the logits (or the logits themselves).
    pub probs: Vec<f32>,
    /// Index of the most probable label.
    pub top: usize,
    /// `[layer][head][query][key]` probabilities over real tokens, when asked for: the
    /// layers and heads `AttentionKeep` names.
    pub attention: Option<Vec<Vec<Vec<Vec<f32>>>>>,
    /// `[layer][token]`: attention rollout after every layer (`rollout_of_means`), when
    /// `AttentionKeep::rollout` asks: it multiplies through every layer, whichever are
    /// kept, so it is computed here, where they all are, and only it is held.
    pub attention_rollout: Option<Vec<Vec<f32>>>,
}

/// One layer's `[head][query][key]` attention averaged over its heads, in f64.
pub fn head_means(layer: &[Vec<Vec<f32>>]) -> Vec<Vec<f64>> {
    let n = layer.first().map_or(0, Vec::len);
    let heads = layer.len().max(1) as f64;
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| layer.iter().map(|h| f64::from(h[i][j])).sum::<f64>() / heads)
                .collect()
        })
        .collect()
}

/// Attention rollout, `(0.5 A_l + 0.5 I) ... (0.5 A_1 + 0.5 I)` with `A` the
/// head-averaged attention (`head_means`, every layer's): the first row after every
/// layer, `[layer][token]`, how much of the first token's state flows from each token.
pub fn rollout_of_means(means: &[Vec<Vec<f64>>]) -> Vec<Vec<f32>> {
    let n = means.first().map_or(0, Vec::len);
    let eye = |i: usize, j: usize| f64::from(u8::from(i == j));
    let mixed: Vec<Vec<Vec<f64>>> = means
        .iter()
        .map(|layer| {
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| 0.5 * layer[i][j] + 0.5 * eye(i, j))
                        .collect()
                })
                .collect()
        })
        .collect();
    // Only the first row is wanted, so multiply a row vector down from layer l rather than
    // whole matrices up from layer 0: L^2 n^2 work instead of L n^3.
    (0..mixed.len())
        .map(|l| {
            let mut v: Vec<f64> = (0..n).map(|j| eye(0, j)).collect();
            for a in mixed[..=l].iter().rev() {
                v = (0..n)
                    .map(|j| (0..n).map(|k| v[k] * a[k][j]).sum())
                    .collect();
            }
            v.into_iter().map(|x| x as f32).collect()
        })
        .collect()
}

/// A model ready to classify.
pub struct Engine {
    model: Box<dyn Classifier>,
    tokenizer: TextTokenizer,
    device: Device,
    /// Label names by index.
    pub labels: Vec<String>,
    /// Softmax, sigmoid or raw logits.
    pub scoring: Scoring,
    /// Repo id or folder the model came from.
    pub model_id: String,
    /// Tokens each input is truncated to.
    pub max_length: usize,
    /// Number format the model computes in.
    pub dtype: DType,
    /// Whether the encoder's linear layers are int8.
    pub quantized: bool,
    /// How the layers compute.
    pub backend: Backend,
    /// The scoring a sentence-transformers cross-encoder's config names, if any.
    pub cross_encoder_scoring: Option<Scoring>,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
}

/// What `--quantize q8` calibrates on: a few sentences of everyday English in several
/// registers (none from a benchmark's data). The channels they light up are the
/// encoder's own: BERT's outlier channels are the same for any text, and in a PyTorch
/// simulation of the int8 scheme calibration on these eight moved the SST-2 dev logit
/// margins as little as calibration on 256 SST-2 training sentences (0.025 either way);
/// on two, four or six of them, more (docs/performance.md, run 11).
const CALIBRATION_TEXTS: &[&str] = &[
    "The committee will publish its final report on Tuesday morning.",
    "I can't believe how good this was, honestly the best meal I've had in years!",
    "Terrible service: we waited an hour and nobody apologised.",
    "Water boils at 100 degrees Celsius at sea level.",
    "She said the new phone battery barely lasts a day, which is disappointing.",
    "Where did you put the keys?",
    "An average film with a few funny moments and a weak ending.",
    "Prices rose 3.2% in October, the fastest pace since 2022.",
];

/// f32 on the CPU, where half precision has no fast kernels and only loses accuracy;
/// f16 on a GPU, where tensor cores run it many times faster, and whose 10-bit mantissa
/// keeps BERT's labels (softmax and the padding mask stay f32 regardless).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

impl Engine {
    /// Loads config, weights and tokenizer; every error names the file at fault.
    pub fn load(files: &ModelFiles, device: Device, opts: &EngineOptions) -> Result<Self> {
        let cfg = crate::models::read_config(&files.config)?;
        let max_length = match opts.max_length {
            None => cfg.max_tokens(),
            Some(n) if n > cfg.max_tokens() => bail!(
                "--max-length {n} exceeds what the model can read: {} tokens (max_position_embeddings {})",
                cfg.max_tokens(),
                cfg.max_position_embeddings
            ),
            Some(n) => n,
        };
        let weight_names = files
            .weights
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let dtype = opts.dtype.unwrap_or_else(|| default_dtype(&device));
        // bf16 on the CPU is an f32 model whose dense layers are bf16 (AMX tiles where
        // the CPU has them): LayerNorm, softmax and the rest stay f32, as under PyTorch's
        // bf16 autocast, and candle's bf16 ops ran bert-base 3.2x slower than f32.
        let bf16_dense = Backend::bf16_dense(&device, dtype);
        let model_dtype = if bf16_dense { DType::F32 } else { dtype };
        let vb = open_weights(&files.weights, model_dtype, &device)?;
        let policy = HeadPolicy {
            allow_untrained: opts.allow_untrained_head,
            num_labels: opts.labels.as_ref().map_or(cfg.labels.len(), Vec::len),
        };
        let backend = Backend::choose(&device, model_dtype);
        let loader = Loader::new(vb, backend).with_bf16_dense(bf16_dense);
        let model = crate::models::load(loader, &cfg, policy)
            .with_context(|| format!("cannot build the model from {weight_names}"))?;
        if opts.quantize_q8 && (!device.is_cpu() || dtype != DType::F32) {
            bail!("--quantize q8 runs on the CPU in f32 only; use --device cpu and no --dtype, or drop --quantize");
        }
        let flag = opts.labels_flag.unwrap_or("--labels");
        let labels = label_names(
            &files.id,
            &cfg.labels,
            opts.labels.as_deref().map(|l| (l, flag)),
            model.num_labels(),
        )?;
        let tokenizer = TextTokenizer::load(&files.tokenizer, max_length, cfg.vocab_size)?;
        let mut engine = Self {
            scoring: opts
                .scoring
                .unwrap_or_else(|| cfg.scoring(model.num_labels())),
            model,
            tokenizer,
            device,
            labels,
            model_id: files.id.clone(),
            max_length,
            dtype,
            quantized: opts.quantize_q8,
            backend,
            cross_encoder_scoring: cfg.cross_encoder_scoring,
            num_layers: cfg.num_layers,
            num_heads: cfg.num_heads,
        };
        if opts.quantize_q8 {
            engine.quantize_q8()?;
        }
        Ok(engine)
    }

    /// Int8 dense layers, calibrated first: f32 passes over `CALIBRATION_TEXTS` record
    /// the range of every input channel, so that each layer can balance its int8 scales
    /// between input and weight (see `kernels::cpu::q8`). On the MiniLM fixture this took
    /// the mean change of the SST-2 dev logit margin against f32 from 0.043 to 0.026 with
    /// byte activations (VNNI), and from 0.027 to 0.017 with word activations (elsewhere).
    fn quantize_q8(&mut self) -> Result<()> {
        let texts = CALIBRATION_TEXTS
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.model.record_input_ranges();
        // A padded batch would add its padding rows to the ranges wherever the model
        // computes them (candle's path, on CPUs without AVX2; DeBERTa), and q8 would then
        // differ from the padding-free kernels' by up to 0.025 in a logit (MiniLM, the
        // parity cases). Those calibrate one text per pass; the padding-free kernels take
        // all eight at once, which starts 5% sooner and records the same ranges to the bit.
        let per_pass = if self.model.skips_padding() {
            texts.len()
        } else {
            1
        };
        for pass in texts.iter().collect::<Vec<_>>().chunks(per_pass.max(1)) {
            self.predict(pass, false)
                .context("the calibration pass of --quantize q8 failed")?;
        }
        self.model.quantize_q8()
    }

    /// Where the model runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the head was loaded (true) or seeded because the user allowed it (false).
    pub fn head_is_trained(&self) -> bool {
        self.model.head_is_trained()
    }

    /// Tokenizes one text.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        self.tokenizer.encode(text)
    }

    /// Tokenizes a pair of texts, cut to the model's length by `strategy`.
    pub fn encode_pair(&self, a: &str, b: &str, strategy: PairTruncation) -> Result<Encoded> {
        self.tokenizer.encode_pair(a, b, strategy)
    }

    /// A long text's overlapping windows (`stride` tokens of overlap).
    /// Token strings and offsets only with `keep_tokens`.
    pub fn windows(&self, text: &str, stride: usize, keep_tokens: bool) -> Result<Vec<Encoded>> {
        self.tokenizer.windows(text, stride, keep_tokens)
    }

    /// Text tokens in one window: `max_length` less the special tokens.
    pub fn window_tokens(&self) -> usize {
        self.tokenizer.window_tokens()
    }

    /// Classifies already tokenized inputs as one padded batch; `keep_attention` copies
    /// every layer's and head's attention out.
    pub fn predict(&self, inputs: &[&Encoded], keep_attention: bool) -> Result<Vec<Prediction>> {
        self.predict_keeping(inputs, keep_attention.then(AttentionKeep::default).as_ref())
    }

    /// As `predict`, copying out the attention of the layers and heads `keep` names (a
    /// dump's `--attention-layers/-heads`) and nothing else: an input's attention is held
    /// from its batch until it is written, so what is not written is never copied.
    pub fn predict_keeping(
        &self,
        inputs: &[&Encoded],
        keep: Option<&AttentionKeep>,
    ) -> Result<Vec<Prediction>> {
        let keep_attention = keep.is_some();
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let seq = inputs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let pad = |f: &dyn Fn(&Encoded) -> Vec<u32>| -> Vec<u32> {
            inputs
                .iter()
                .flat_map(|e| {
                    let mut v = f(e);
                    v.resize(seq, 0);
                    v
                })
                .collect()
        };
        let shape = (inputs.len(), seq);
        let batch = Batch {
            ids: Tensor::from_vec(pad(&|e| e.ids.clone()), shape, &self.device)?,
            type_ids: Tensor::from_vec(pad(&|e| e.type_ids.clone()), shape, &self.device)?,
            mask: Tensor::from_vec(pad(&|e| vec![1; e.ids.len()]), shape, &self.device)?,
        };
        let out = self.model.forward(&batch, keep_attention)?;
        let logits: Vec<Vec<f32>> = out.logits.to_vec2()?;
        let mut predictions = Vec::with_capacity(inputs.len());
        for (i, logits) in logits.into_iter().enumerate() {
            let probs = match self.scoring {
                Scoring::Softmax => softmax(&logits),
                Scoring::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
                Scoring::None => logits.clone(),
            };
            let top = argmax(&probs);
            // Cut the padding away in tensor space, so only real tokens are copied out.
            let n = inputs[i].ids.len();
            let attention_rollout = match keep {
                Some(keep) if keep.rollout => {
                    let means = out
                        .attentions
                        .iter()
                        .map(|t| {
                            let t = t.get(i)?.narrow(1, 0, n)?.narrow(2, 0, n)?;
                            Ok(head_means(&t.to_dtype(DType::F32)?.to_vec3()?))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Some(rollout_of_means(&means))
                }
                _ => None,
            };
            let attention = match keep {
                Some(keep) => {
                    let all_layers: Vec<usize> = (0..out.attentions.len()).collect();
                    let layers = keep.layers.as_deref().unwrap_or(&all_layers);
                    let heads = keep
                        .heads
                        .as_ref()
                        .map(|h| {
                            let h: Vec<u32> = h.iter().map(|&x| x as u32).collect();
                            Tensor::new(h, &self.device)
                        })
                        .transpose()?;
                    let layers = layers
                        .iter()
                        .map(|&l| {
                            let t = out.attentions.get(l).with_context(|| {
                                format!(
                                    "layer {l} asked of a model with {} layers",
                                    out.attentions.len()
                                )
                            })?;
                            let t = t.get(i)?.narrow(1, 0, n)?.narrow(2, 0, n)?;
                            let t = match &heads {
                                Some(h) => t.contiguous()?.index_select(h, 0)?,
                                None => t,
                            };
                            Ok(t.to_dtype(DType::F32)?.to_vec3()?)
                        })
                        .collect::<Result<_>>()?;
                    Some(layers)
                }
                None => None,
            };
            predictions.push(Prediction {
                logits,
                probs,
                top,
                attention,
                attention_rollout,
            });
        }
        Ok(predictions)
    }
}

/// Which attention `predict_keeping` copies out: these layers, and these heads of each
/// (all when `None`), in the order given.
#[derive(Debug, Clone, Default)]
pub struct AttentionKeep {
    /// Layer indices.
    pub layers: Option<Vec<usize>>,
    /// Head indices.
    pub heads: Option<Vec<usize>>,
    /// Also the attention rollout (`Prediction::attention_rollout`).
    pub rollout: bool,
}

/// Names for each label: `--labels`, else the config's, else built-in names for the default
/// model; the count must match the classifier's outputs.
fn label_names(
    model_id: &str,
    config: &[String],
    given: Option<(&[String], &str)>,
    num_labels: usize,
) -> Result<Vec<String>> {
    if let Some((given, flag)) = given {
        if given.len() != num_labels {
            bail!(
                "{flag} names {} labels but the model has {num_labels} outputs",
                given.len()
            );
        }
        if let Some(blank) = given.iter().position(|l| l.trim().is_empty()) {
            bail!("{flag}: label {} is blank", blank + 1);
        }
        for (i, l) in given.iter().enumerate() {
            if given[..i].contains(l) {
                bail!("{flag} names {l:?} twice; every label needs its own name");
            }
        }
        return Ok(given.to_vec());
    }
    if config.len() != num_labels {
        bail!(
            "config.json names {} labels (id2label/num_labels) but the classifier in the checkpoint has {num_labels} outputs; \
             the config does not belong to these weights (--labels names them if only the config is wrong)",
            config.len()
        );
    }
    if !(labels_are_generic(config) && model_id == DEFAULT_MODEL) {
        return Ok(config.to_vec());
    }
    if model_id == DEFAULT_MODEL && num_labels == DEFAULT_MODEL_LABELS.len() {
        return Ok(DEFAULT_MODEL_LABELS.iter().map(|s| s.to_string()).collect());
    }
    Ok((0..num_labels).map(|i| format!("LABEL_{i}")).collect())
}

/// Probabilities from logits, stable for large ones.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = xs.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Index of the largest value (the first, on ties).
pub fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_names_prefer_flag_then_config_then_builtin() {
        let generic = strings(&["LABEL_0", "LABEL_1"]);
        let named = strings(&["neg", "pos"]);
        assert_eq!(
            label_names("x", &generic, Some((&named, "--labels")), 2).unwrap(),
            named
        );
        assert_eq!(label_names("x", &named, None, 2).unwrap(), named);
        assert_eq!(
            label_names(DEFAULT_MODEL, &generic, None, 2).unwrap(),
            strings(&DEFAULT_MODEL_LABELS)
        );
        assert_eq!(label_names("x", &generic, None, 2).unwrap(), generic);
        let err = label_names("x", &generic, Some((&strings(&["a"]), "--labels")), 2).unwrap_err();
        assert!(err.to_string().contains("1 labels"), "{err}");
        let err = label_names(
            "x",
            &generic,
            Some((&strings(&["a", "a"]), "--model-labels")),
            2,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--model-labels names \"a\" twice"),
            "{err}"
        );
        let err =
            label_names("x", &generic, Some((&strings(&["a", " "]), "--labels")), 2).unwrap_err();
        assert!(err.to_string().contains("label 2 is blank"), "{err}");
        let three = strings(&["a", "b", "c"]);
        let err = label_names("x", &three, None, 2).unwrap_err();
        assert!(
            err.to_string().contains("names 3 labels") && err.to_string().contains("has 2 outputs"),
            "{err}"
        );
        assert!(
            label_names("x", &generic[..1], None, 2).is_err(),
            "a 2-row head under 1 label"
        );
    }

    #[test]
    fn softmax_is_stable_and_argmax_picks_first_max() {
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
    }
}
