//! Every supported family against PyTorch `transformers` (eager, f32) on its committed
//! random checkpoint: token ids, logits, labels and attention on every parity case,
//! batching invariance, tokenizers rebuilt from the family's own files, and the binary
//! end to end. On this CPU's default backend; tests/portable.rs, tests/kernels.rs and
//! tests/candle_ops.rs repeat a subset on the others.

use crate::common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// One family, whole: every reference case and the attention cases.
fn parity(name: &str) {
    let engine = family_engine(name);
    let worst = assert_family_matches_pytorch(name, &engine, None);
    let attention = assert_family_attention_matches_pytorch(name, &engine);
    let cases = reference(&format!("family-{name}"))["cases"]
        .as_array()
        .unwrap()
        .len();
    say(&format!(
        "{name} ({}): {cases} cases, worst logit difference {worst:e}, worst attention difference {attention:e}",
        engine.backend.describe()
    ));
}

/// The same texts alone and in one padded batch of 48 give the same logits (within
/// 1e-5) and labels: padding and batch neighbours change nothing.
fn batch_invariance(name: &str) {
    let engine = family_engine(name);
    let reference = reference(&format!("family-{name}"));
    let cases = reference["cases"].as_array().unwrap();
    // Short, long and edge cases together, so padding is heavy.
    let picked: Vec<Value> = cases
        .iter()
        .take(40)
        .chain(cases.iter().rev().take(8))
        .cloned()
        .collect();
    let batched = predict_in_batches(&engine, &picked, picked.len());
    let alone = predict_in_batches(&engine, &picked, 1);
    let mut bitwise = true;
    for ((b, a), c) in batched.iter().zip(&alone).zip(&picked) {
        let d = max_diff(&b.logits, &a.logits);
        bitwise &= d == 0.0;
        assert!(
            d < 1e-5,
            "{name} {}: batched vs alone off by {d}",
            c["name"]
        );
        assert_eq!(b.top, a.top, "{name} {}", c["name"]);
    }
    say(&format!(
        "{name}: batch of {} vs one at a time: {}",
        picked.len(),
        if bitwise {
            "bitwise identical"
        } else {
            "within 1e-5"
        }
    ));
}

/// Copies the fixture without `tokenizer.json`.
fn without_tokenizer_json(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(family_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tokenizer.json" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// A repo without `tokenizer.json` tokenizes every case identically from the family's
/// own files (WordPiece `vocab.txt`, or byte-level BPE `vocab.json` + `merges.txt`).
fn native_tokenizer(name: &str, native: &str) {
    let dir = without_tokenizer_json(name);
    assert!(dir.path().join(native).is_file(), "{name} has no {native}");
    let engine = engine_with(dir.path(), &Default::default()).unwrap();
    let reference = reference(&format!("family-{name}"));
    for c in reference["cases"].as_array().unwrap() {
        let got = engine.encode(c["text"].as_str().unwrap()).unwrap();
        assert_eq!(
            got.ids,
            ids(&c["ids"]),
            "{name} from {native}: {}",
            c["name"]
        );
    }
}

/// A SentencePiece-only repo is refused, naming the file it has and the one it needs.
fn sentencepiece_only(name: &str, spm: &str) {
    let dir = without_tokenizer_json(name);
    let err = engine_with(dir.path(), &Default::default()).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains(spm) && msg.contains("tokenizer.json"), "{msg}");
}

macro_rules! family {
    ($module:ident, $name:literal, $tokenizer:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn matches_pytorch_on_every_case() {
                parity($name);
            }

            #[test]
            fn batching_changes_nothing() {
                batch_invariance($name);
            }

            #[test]
            fn tokenizes_from_its_own_files() {
                let (file, sentencepiece): (&str, bool) = $tokenizer;
                if sentencepiece {
                    sentencepiece_only($name, file);
                } else {
                    native_tokenizer($name, file);
                }
            }
        }
    };
}

family!(distilbert, "distilbert", ("vocab.txt", false));
family!(roberta, "roberta", ("merges.txt", false));
family!(
    xlm_roberta,
    "xlm-roberta",
    ("sentencepiece.bpe.model", true)
);
family!(camembert, "camembert", ("sentencepiece.bpe.model", true));
family!(electra, "electra", ("vocab.txt", false));
family!(deberta_v3, "deberta-v3", ("spm.model", true));
family!(deberta_v2, "deberta-v2", ("spm.model", true));
family!(bart, "bart", ("merges.txt", false));

mod modernbert {
    use super::*;

    #[test]
    fn matches_pytorch_on_every_case() {
        parity("modernbert");
    }

    #[test]
    fn batching_changes_nothing() {
        batch_invariance("modernbert");
    }

    /// The fixture pools with the mean of the real tokens; with its config switched to
    /// `classifier_pooling: cls` it must match PyTorch's `[CLS]` pooling instead.
    #[test]
    fn cls_pooling_matches_pytorch() {
        let reference = reference("family-modernbert");
        let pooling = &reference["cls_pooling"];
        let dir = patched_fixture("modernbert", &pooling["config_patch"]);
        let engine = engine_with(dir.path(), &Default::default()).unwrap();
        let cases = pooling["cases"].as_array().unwrap();
        let preds = predict_in_batches(&engine, cases, 8);
        let mut worst = 0f32;
        for (p, c) in preds.iter().zip(cases) {
            let got = engine.encode(c["text"].as_str().unwrap()).unwrap();
            assert_eq!(got.ids, ids(&c["ids"]), "{}", c["name"]);
            let d = max_diff(&p.logits, &floats(&c["logits"]));
            assert!(d < 1e-4, "{}: logits off by {d}", c["name"]);
            assert_eq!(p.top as u64, c["label"].as_u64().unwrap(), "{}", c["name"]);
            worst = worst.max(d);
        }
        say(&format!(
            "modernbert, cls pooling: {} cases, worst logit difference {worst:e}",
            cases.len()
        ));
    }

    /// With its position limit raised to 8,192, the fixture reads a text of 3,000 and
    /// one of 8,192 tokens whole, in one pass (attention then goes a block of queries
    /// at a time), and matches PyTorch on both.
    #[test]
    fn reads_8192_tokens_in_one_pass() {
        let reference = reference("modernbert-long");
        let dir = patched_fixture("modernbert", &reference["config_patch"]);
        let engine = engine_with(dir.path(), &Default::default()).unwrap();
        assert_eq!(engine.max_length, 8192);
        for c in reference["cases"].as_array().unwrap() {
            let got = engine.encode(c["text"].as_str().unwrap()).unwrap();
            assert_eq!(got.ids, ids(&c["ids"]), "{} tokens", c["tokens"]);
            assert!(!got.truncated);
            let p = engine.predict(&[&got], false).unwrap();
            let d = max_diff(&p[0].logits, &floats(&c["logits"]));
            assert!(d < 1e-4, "{} tokens: logits off by {d}", c["tokens"]);
            say(&format!(
                "modernbert, {} tokens in one pass: logits within {d:e} of PyTorch",
                c["tokens"]
            ));
        }
    }
}

/// A copy of family fixture `name` with `patch`'s keys set in its config.json.
fn patched_fixture(name: &str, patch: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(family_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

fn bert_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bert-cli"));
    c.env_remove("BERT_CLI_MODEL").env("HF_HUB_OFFLINE", "1");
    c
}

/// The binary on each family: labels and scores as PyTorch's for the first dev
/// sentences, `info` naming the family.
#[test]
fn cli_classifies_with_every_family() {
    for name in FAMILIES {
        let reference = reference(&format!("family-{name}"));
        let cases = &reference["cases"].as_array().unwrap()[..6];
        let dir = family_dir(name);
        let out = bert_cli()
            .args(["classify", "--format", "jsonl", "--all-scores", "--model"])
            .arg(&dir)
            .args(cases.iter().map(|c| c["text"].as_str().unwrap()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let labels = &config["id2label"];
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), cases.len());
        for (line, c) in lines.iter().zip(cases) {
            let want = &labels[c["label"].as_u64().unwrap().to_string()];
            assert_eq!(&line["label"], want, "{name}: {line}");
        }
        let info = bert_cli().arg("info").arg(&dir).output().unwrap();
        let text = String::from_utf8(info.stdout).unwrap();
        let model_type = config["model_type"].as_str().unwrap();
        assert!(
            text.contains(&format!("model_type {model_type}"))
                && text.contains("trained classifier"),
            "{name}: {text}"
        );
    }
}

/// `--dump-attention` on RoBERTa names its own special tokens.
#[test]
fn attention_dump_uses_the_family_tokens() {
    let dump = tempfile::NamedTempFile::new().unwrap();
    let out = bert_cli()
        .args(["classify", "--model"])
        .arg(family_dir("roberta"))
        .arg("--dump-attention")
        .arg(dump.path())
        .arg("the cat jumped")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(dump.path()).unwrap()).unwrap();
    let tokens = doc[0]["tokens"].as_array().unwrap();
    assert_eq!(tokens.first().unwrap(), "<s>");
    assert_eq!(tokens.last().unwrap(), "</s>");
    // RoBERTa's multi-label fixture scores each label with a sigmoid.
    let probs = doc[0]["prediction"]["probs"].as_array().unwrap();
    let sum: f64 = probs.iter().map(|p| p.as_f64().unwrap()).sum();
    assert!(
        (sum - 1.0).abs() > 1e-3,
        "sigmoid scores should not sum to 1: {sum}"
    );
}

/// An unsupported `model_type` is refused before any weight is read, naming the type and
/// the families that are supported.
#[test]
fn unsupported_family_is_refused_before_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("config.json", r#"{"model_type": "gpt2", "n_embd": 16}"#);
    // Not a checkpoint: reading it would fail with a different message.
    write("model.safetensors", "garbage");
    write("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n");
    let out = bert_cli()
        .args(["classify", "--model"])
        .arg(dir.path())
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gpt2\"") && err.contains("deberta-v2") && !err.contains("safetensors"),
        "{err}"
    );
}

/// `--quantize q8` and `--dtype bf16` run every family: finite scores, and labels that
/// mostly agree with PyTorch f32 (random weights sit closer to the decision boundaries
/// than trained ones, so the bar is lower than MiniLM's 98%).
#[test]
fn int8_and_bf16_run_every_family() {
    use bert_cli::engine::EngineOptions;
    for name in FAMILIES {
        let reference = reference(&format!("family-{name}"));
        let cases = &reference["cases"].as_array().unwrap()[..200];
        for (what, opts) in [
            (
                "q8",
                EngineOptions {
                    quantize_q8: true,
                    ..Default::default()
                },
            ),
            (
                "bf16",
                EngineOptions {
                    dtype: Some(candle_core::DType::BF16),
                    ..Default::default()
                },
            ),
        ] {
            let engine = engine_with(&family_dir(name), &opts).unwrap();
            let preds = predict_in_batches(&engine, cases, 32);
            let agree = preds
                .iter()
                .zip(cases)
                .filter(|(p, c)| p.top as u64 == c["label"].as_u64().unwrap())
                .count();
            assert!(preds.iter().all(|p| p.logits.iter().all(|x| x.is_finite())));
            say(&format!(
                "{name} {what}: {agree}/{} labels as PyTorch f32",
                cases.len()
            ));
            assert!(
                agree * 100 >= cases.len() * 85,
                "{name} {what}: {agree} agree"
            );
        }
    }
}

/// A tokenizer whose ids run past the model's embedding table is refused when the model
/// loads, naming both sizes, before any input is read (not on the first text that reaches
/// a high id).
#[test]
fn tokenizer_larger_than_the_embedding_table_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(family_dir("distilbert")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    // MiniLM's WordPiece tokenizer: 30,522 ids, far past the fixture's table.
    std::fs::copy(
        minilm_sst2().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = engine_with(dir.path(), &Default::default()).err().unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ids up to 30521") && msg.contains("tokenizer.json"),
        "{msg}"
    );
    // The binary refuses before reading its (empty) input.
    let out = bert_cli()
        .args(["classify", "--model"])
        .arg(dir.path())
        .arg("--input")
        .arg("/dev/null")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `info` is the natural health check: a weights file cut in half, a truncated
/// tokenizer.json, or a tokenizer past the embedding table fail it (exit 2, the file
/// named) as they fail `classify`; the intact fixture passes.
#[test]
fn info_refuses_what_classify_refuses() {
    let copy = || {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(family_dir("distilbert")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        dir
    };
    let cut = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };
    let info = |dir: &std::path::Path| bert_cli().arg("info").arg(dir).output().unwrap();
    let intact = copy();
    assert_eq!(info(intact.path()).status.code(), Some(0));
    for (file, expect) in [
        ("model.safetensors", "cut short"),
        ("tokenizer.json", "tokenizer.json"),
    ] {
        let dir = copy();
        cut(&dir.path().join(file));
        let out = info(dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(expect), "{file}: {err}");
    }
    let dir = copy();
    std::fs::copy(
        minilm_sst2().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let out = info(dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ids up to 30521"));
}
