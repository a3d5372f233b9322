//! What a job asks of the model for each record, and how the model's answers make one
//! result: a text or a pair classified as it is (cut to the model's length), a long text
//! cut into overlapping windows whose scores are pooled, a text scored against candidate
//! labels through an NLI model (zero-shot), or a document scored against a query
//! (reranking). The pipeline batches every record's model inputs together, whatever the
//! task, so the windows of one document or the label pairs of one text fill batches with
//! everyone else's.

use anyhow::{bail, Result};

use crate::engine::{argmax, softmax, Engine, Prediction};
use crate::input::Item;
use crate::tokenize::{Encoded, PairTruncation};

/// What to do with texts longer than the model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongText {
    /// Keep the first tokens, as transformers' pipelines do.
    #[default]
    Truncate,
    /// Classify every window of the text, `stride` tokens of overlap between neighbours,
    /// and pool the windows' scores.
    Chunk {
        /// Tokens each window shares with the previous one.
        stride: usize,
        /// How the windows' scores become the text's.
        aggregate: Aggregate,
    },
}

/// How the scores of a document's windows are pooled (`--aggregate`; each value's first
/// paragraph is its `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Aggregate {
    /// The mean of each label's probability over the windows.
    ///
    /// The logits are pooled the same way.
    Mean,
    /// Each label's highest probability in any window.
    ///
    /// For multi-label models: a label present anywhere in the document. The logits are
    /// pooled the same way.
    Max,
}

/// Zero-shot classification with an NLI model: each candidate label becomes the
/// hypothesis of a (text, hypothesis) pair, as transformers'
/// `zero-shot-classification` pipeline does it.
#[derive(Debug, Clone)]
pub struct ZeroShot {
    /// Candidate labels, in the order given.
    pub labels: Vec<String>,
    /// The hypotheses, one per label (`{}` in the template replaced by the label).
    pub hypotheses: Vec<String>,
    /// Each label judged on its own (entailment against contradiction) rather than the
    /// labels competing in one softmax.
    pub multi_label: bool,
    /// Index of the model's entailment logit.
    pub entailment: usize,
    /// Index of the model's contradiction logit (for `multi_label`).
    pub contradiction: usize,
}

impl ZeroShot {
    /// Checks the labels and finds the entailment logit among the model's label names
    /// (the first whose name starts with "entail", any case, as transformers does).
    pub fn new(
        labels: Vec<String>,
        template: &str,
        multi_label: bool,
        model_labels: &[String],
    ) -> Result<Self> {
        // As transformers' pipeline reads "a, b": each label stripped.
        let labels: Vec<String> = labels.iter().map(|l| l.trim().to_string()).collect();
        if labels.is_empty() {
            bail!("--labels names no candidate labels; give them as --labels \"sports,politics,tech\"");
        }
        if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
            bail!("--labels: candidate label {} is blank", i + 1);
        }
        for (i, l) in labels.iter().enumerate() {
            if labels[..i].contains(l) {
                bail!("--labels names {l:?} twice; every candidate needs its own name");
            }
        }
        // Checked with a stand-in label before any text is read.
        fill_template(template, "x")?;
        let Some(entailment) = model_labels
            .iter()
            .position(|l| l.to_lowercase().starts_with("entail"))
        else {
            bail!(
                "the model's labels ({}) name no entailment, so it is not an NLI model zero-shot can use; \
                 pick one trained on MNLI/XNLI (such as {}), or name its labels with --model-labels",
                model_labels.join(", "),
                crate::models::DEFAULT_ZERO_SHOT_MODEL
            );
        };
        // transformers takes the first label as contradiction, or the last when the first
        // is entailment.
        let contradiction = if entailment == 0 {
            model_labels.len() - 1
        } else {
            0
        };
        let hypotheses = labels
            .iter()
            .map(|l| fill_template(template, l))
            .collect::<Result<_>>()?;
        Ok(Self {
            // One candidate cannot compete with others: judged on its own, as transformers.
            multi_label: multi_label || labels.len() == 1,
            labels,
            hypotheses,
            entailment,
            contradiction,
        })
    }
}

/// The hypothesis for `label`, as transformers' pipeline makes it with Python's
/// `template.format(label)`: `{}` (or `{0}`) is the label, `{{` and `}}` are braces, and
/// what Python refuses (a second `{}`, a named field, a lone brace) is refused, with the
/// template named.
pub fn fill_template(template: &str, label: &str) -> Result<String> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "--hypothesis-template {template:?} {why}; write {{}} once where the label goes, \
             and {{{{ or }}}} for a literal brace (as Python's str.format, which transformers uses)"
        )
    };
    let mut out = String::with_capacity(template.len() + label.len());
    let mut chars = template.chars().peekable();
    let (mut auto, mut manual) = (0, false);
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(refuse("has a single '}'")),
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => field.push(c),
                        None => return Err(refuse("has a '{' that is never closed")),
                    }
                }
                match field.as_str() {
                    "" if manual => return Err(refuse("mixes {} with {0}")),
                    "" => {
                        auto += 1;
                        if auto > 1 {
                            return Err(refuse("has more than one {}, and there is one label"));
                        }
                    }
                    "0" if auto > 0 => return Err(refuse("mixes {} with {0}")),
                    "0" => manual = true,
                    other => {
                        return Err(refuse(&format!(
                            "has the field {{{other}}}, which no label fills"
                        )))
                    }
                }
                out.push_str(label);
            }
            c => out.push(c),
        }
    }
    if auto == 0 && !manual {
        return Err(refuse("has no {} for the label to go in"));
    }
    Ok(out)
}

/// The job.
#[derive(Debug, Clone)]
pub enum Task {
    /// Each record's text (or text pair) through the classifier.
    Classify(LongText),
    /// Each record's text against every candidate label.
    ZeroShot(ZeroShot),
    /// Each record (a document) paired with the query, as a cross-encoder reads it.
    Rerank {
        /// The query.
        query: String,
    },
}

/// One model input of a record and what the model said about it.
#[derive(Debug, Clone)]
pub struct Part {
    /// The tokens.
    pub input: Encoded,
    /// The model's answer for them.
    pub prediction: Prediction,
    /// The first text, when it is not the record's own (a reranked document's query).
    pub text: Option<String>,
    /// The second text of a pair, when there is one.
    pub text_pair: Option<String>,
}

/// A record's result: its parts (one, or a window per chunk, or a pair per candidate
/// label) and the prediction they make together.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The model inputs, in order.
    pub parts: Vec<Part>,
    /// The record's prediction.
    pub prediction: Prediction,
    /// Whether `parts` are windows of one text.
    pub chunked: bool,
}

impl Answer {
    /// Tokens the model read for this record: one input's, or all windows' together.
    pub fn tokens(&self) -> usize {
        if self.chunked {
            self.parts.iter().map(|p| p.input.ids.len()).sum()
        } else {
            self.parts.first().map_or(0, |p| p.input.ids.len())
        }
    }

    /// Whether any part of the record was cut.
    pub fn truncated(&self) -> bool {
        self.parts.iter().any(|p| p.input.truncated)
    }
}

/// A record's model inputs, before the model has seen them.
pub struct Planned {
    /// The inputs.
    pub inputs: Vec<Encoded>,
    /// Their first texts, when not the record's.
    pub texts: Vec<Option<String>>,
    /// Their second texts.
    pub pairs: Vec<Option<String>>,
}

impl Task {
    /// Tokenizes one record into its model inputs.
    /// `keep_tokens`: the token strings and offsets too (for an attention dump), which a
    /// long text's windows otherwise leave out.
    pub fn plan(&self, engine: &Engine, item: &Item, keep_tokens: bool) -> Result<Planned> {
        let one = |input: Encoded, text: Option<String>, pair: Option<String>| Planned {
            inputs: vec![input],
            texts: vec![text],
            pairs: vec![pair],
        };
        match self {
            Task::Classify(long) => match (&item.pair, long) {
                (Some(b), LongText::Truncate) => Ok(one(
                    engine.encode_pair(&item.text, b, PairTruncation::LongestFirst)?,
                    None,
                    Some(b.clone()),
                )),
                (None, LongText::Truncate) => Ok(one(engine.encode(&item.text)?, None, None)),
                (Some(_), LongText::Chunk { .. }) => {
                    bail!("--long-text chunk splits single texts, not pairs")
                }
                (None, LongText::Chunk { stride, .. }) => {
                    let inputs = engine.windows(&item.text, *stride, keep_tokens)?;
                    let n = inputs.len();
                    Ok(Planned {
                        inputs,
                        texts: vec![None; n],
                        pairs: vec![None; n],
                    })
                }
            },
            Task::ZeroShot(z) => {
                let inputs = z
                    .hypotheses
                    .iter()
                    .map(|h| engine.encode_pair(&item.text, h, PairTruncation::OnlyFirst))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Planned {
                    inputs,
                    texts: vec![None; z.hypotheses.len()],
                    pairs: z.hypotheses.iter().cloned().map(Some).collect(),
                })
            }
            Task::Rerank { query } => Ok(one(
                engine.encode_pair(query, &item.text, PairTruncation::LongestFirst)?,
                Some(query.clone()),
                Some(item.text.clone()),
            )),
        }
    }

    /// The record's prediction from its parts' (in `plan`'s order).
    pub fn combine(&self, parts: &[Prediction]) -> Result<Prediction> {
        let Some(first) = parts.first() else {
            bail!("internal error: a record with no model input");
        };
        match self {
            Task::Classify(LongText::Truncate) | Task::Rerank { .. } => Ok(Prediction {
                attention: None,
                attention_rollout: None,
                ..first.clone()
            }),
            Task::Classify(LongText::Chunk { aggregate, .. }) => {
                let pool = |get: &dyn Fn(&Prediction) -> &[f32]| -> Vec<f32> {
                    let n = get(first).len();
                    (0..n)
                        .map(|j| match aggregate {
                            Aggregate::Mean => {
                                parts.iter().map(|p| get(p)[j]).sum::<f32>() / parts.len() as f32
                            }
                            Aggregate::Max => parts
                                .iter()
                                .map(|p| get(p)[j])
                                .fold(f32::NEG_INFINITY, f32::max),
                        })
                        .collect()
                };
                let probs = pool(&|p| &p.probs);
                Ok(Prediction {
                    logits: pool(&|p| &p.logits),
                    top: argmax(&probs),
                    probs,
                    attention: None,
                    attention_rollout: None,
                })
            }
            Task::ZeroShot(z) => {
                let logit = |p: &Prediction, i: usize| -> Result<f32> {
                    p.logits.get(i).copied().ok_or_else(|| {
                        anyhow::anyhow!("internal error: the model gave {} logits", p.logits.len())
                    })
                };
                let entail = parts
                    .iter()
                    .map(|p| logit(p, z.entailment))
                    .collect::<Result<Vec<f32>>>()?;
                let probs = if z.multi_label {
                    parts
                        .iter()
                        .map(|p| {
                            let pair = [logit(p, z.contradiction)?, logit(p, z.entailment)?];
                            Ok(softmax(&pair)[1])
                        })
                        .collect::<Result<Vec<f32>>>()?
                } else {
                    softmax(&entail)
                };
                Ok(Prediction {
                    top: argmax(&probs),
                    logits: entail,
                    probs,
                    attention: None,
                    attention_rollout: None,
                })
            }
        }
    }

    /// The label names the record's prediction is over: the model's, or the candidates.
    pub fn labels<'a>(&'a self, model_labels: &'a [String]) -> &'a [String] {
        match self {
            Task::ZeroShot(z) => &z.labels,
            _ => model_labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fill_template;

    /// What Python's `template.format("a")` gives, or refuses.
    #[test]
    fn templates_fill_as_python_formats_them() {
        for (template, want) in [
            ("This example is {}.", Some("This example is a.")),
            ("{{x}} {}", Some("{x} a")),
            ("{0} is {0}", Some("a is a")),
            ("{{}} {}", Some("{} a")),
            ("{} and {}", None),
            ("{x} {}", None),
            ("{} }", None),
            ("{} {", None),
            ("{0} {}", None),
            ("no field", None),
        ] {
            let got = fill_template(template, "a").ok();
            assert_eq!(got.as_deref(), want, "{template:?}");
        }
        let err = fill_template("{} and {}", "a").unwrap_err().to_string();
        assert!(err.contains("more than one {}"), "{err}");
    }
}
