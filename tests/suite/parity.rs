//! The model against PyTorch `transformers` on real weights (references committed by
//! scripts/make_reference.py), plus loading variants and the errors bad checkpoints give.

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use bert_cli::engine::{Engine, EngineOptions};
use bert_cli::layers::Backend;
use bert_cli::models::config::Scoring;
use candle_core::{safetensors, DType, Device, Tensor};
use common::*;

fn engine(dir: &Path) -> Engine {
    engine_with(dir, &EngineOptions::default()).unwrap()
}

/// The full error chain of a load that must fail.
fn load_error(dir: &Path, opts: &EngineOptions) -> String {
    match engine_with(dir, opts) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// Every SST-2 dev sentence and edge case: same token ids, logits within 1e-4, same label,
/// one at a time and in padded batches of 32 (batching must not change any logit).
#[test]
fn minilm_matches_pytorch_on_dev_set_and_edge_cases() {
    let reference = reference("minilm-sst2");
    let cases = reference["cases"].as_array().unwrap();
    assert!(
        cases.len() >= 872 + 10,
        "reference has {} cases",
        cases.len()
    );
    let engine = engine(&minilm_sst2());
    let encoded: Vec<_> = cases
        .iter()
        .map(|c| engine.encode(c["text"].as_str().unwrap()).unwrap())
        .collect();
    for (c, e) in cases.iter().zip(&encoded) {
        assert_eq!(
            e.ids,
            ids(&c["ids"]),
            "token ids differ for case {}",
            c["name"]
        );
    }
    let mut single = Vec::new();
    for e in &encoded {
        single.extend(engine.predict(&[e], false).unwrap());
    }
    let mut batched = Vec::new();
    for chunk in encoded.chunks(32) {
        let refs: Vec<_> = chunk.iter().collect();
        batched.extend(engine.predict(&refs, false).unwrap());
    }
    let mut worst = 0f32;
    for ((c, s), b) in cases.iter().zip(&single).zip(&batched) {
        let want = floats(&c["logits"]);
        let d = max_diff(&s.logits, &want);
        worst = worst.max(d);
        assert!(
            d < 1e-4,
            "case {}: logits {:?} vs PyTorch {:?}",
            c["name"],
            s.logits,
            want
        );
        assert_eq!(
            s.top as u64,
            c["label"].as_u64().unwrap(),
            "label differs for case {}",
            c["name"]
        );
        let db = max_diff(&b.logits, &s.logits);
        assert!(
            db < 1e-5,
            "case {}: padded batch changed logits by {db}",
            c["name"]
        );
        assert_eq!(b.top, s.top);
    }
    eprintln!(
        "worst logit difference against PyTorch: {worst:e} over {} cases",
        cases.len()
    );
}

/// A text scores the same bits alone and padded inside a batch of longer texts, in f32
/// and q8, on the CPU kernels this machine runs by default (attention stops at each
/// text's last real token). int8 rounding turns a 1e-7 difference in one activation into
/// a different score, so without this a q8 score would depend on its neighbours. The
/// path through candle's ops (other CPUs) only promises f32 within 1e-5.
#[test]
fn a_text_scores_the_same_whatever_it_is_batched_with() {
    let text = "audrey tatou has a knack for picking roles that magnify her outrageous charm .";
    let long = "in exactly 89 minutes , most of which passed as slowly as if i 'd been sitting \
                naked on an igloo , formula 51 sank from quirky to jerky to utter turkey .";
    for quantize_q8 in [false, true] {
        let engine = minilm_engine(quantize_q8);
        let (short, long) = (engine.encode(text).unwrap(), engine.encode(long).unwrap());
        assert!(long.ids.len() > short.ids.len() + 8, "the batch must pad");
        let alone = engine.predict(&[&short], false).unwrap().remove(0);
        let batched = engine
            .predict(&[&long, &short, &long], false)
            .unwrap()
            .remove(1);
        let differs = max_diff(&alone.logits, &batched.logits);
        if engine.backend == Backend::Kernels {
            assert_eq!(
                alone.logits, batched.logits,
                "q8 {quantize_q8}: batching changed the logits"
            );
        } else if !quantize_q8 {
            assert!(differs < 1e-5, "batching changed the logits by {differs}");
        } else {
            say(&format!(
                "SKIPPED q8 batching invariance: this CPU takes candle's path ({}), which \
                 promises none for int8; tests/kernels.rs checks it on the CPU kernels",
                engine.backend.describe()
            ));
        }
    }
}

/// f16 and bf16 (the GPU defaults' number formats; on the CPU, f16 runs candle's half
/// ops and bf16 the dense layers in bf16): labels agree with PyTorch f32 on at least
/// 99.5% of the dev set, and logits stay close. The padding
/// mask must stay finite and the softmax f32, or padded batches would give NaN or drift.
#[test]
fn half_precision_keeps_labels() {
    let reference = reference("minilm-sst2");
    let cases = reference["cases"].as_array().unwrap();
    for (dtype, tolerance) in [(DType::F16, 0.05f32), (DType::BF16, 0.25)] {
        let engine = engine_with(
            &minilm_sst2(),
            &EngineOptions {
                dtype: Some(dtype),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(engine.dtype, dtype);
        let predictions = predict_in_batches(&engine, cases, 64);
        let (mut agree, mut worst) = (0, 0f32);
        for (c, p) in cases.iter().zip(&predictions) {
            assert!(p.logits.iter().all(|x| x.is_finite()), "{dtype:?}: {p:?}");
            worst = worst.max(max_diff(&p.logits, &floats(&c["logits"])));
            agree += usize::from(p.top as u64 == c["label"].as_u64().unwrap());
        }
        let share = agree as f64 / cases.len() as f64;
        eprintln!(
            "{dtype:?}: labels agree on {agree}/{} ({:.2}%), worst logit difference {worst:e}",
            cases.len(),
            share * 100.0
        );
        assert!(
            share >= 0.995,
            "{dtype:?}: only {agree}/{} labels agree",
            cases.len()
        );
        assert!(worst < tolerance, "{dtype:?}: logits off by {worst}");
    }
}

/// `--dtype bf16` on the CPU: the dense layers in bf16 (on AMX tiles where the CPU has
/// them, as bf16-rounded weights with f32 arithmetic elsewhere), the rest f32. Against
/// bert-cli's own f32 on the dev set and edge cases: labels agree on at least 99.5% (the
/// issue's bar), the logits differ (so the rounding did happen) but by little.
#[test]
fn bf16_dense_layers_agree_with_f32() {
    let reference = reference("minilm-sst2");
    let cases = reference["cases"].as_array().unwrap();
    let f32_engine = engine(&minilm_sst2());
    let bf16_engine = engine_with(
        &minilm_sst2(),
        &EngineOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        },
    )
    .unwrap();
    let path = if bert_cli::kernels::cpu::amx() {
        "AMX tiles"
    } else {
        "no AMX here: bf16-rounded weights, f32 arithmetic"
    };
    let want = predict_in_batches(&f32_engine, cases, 32);
    let got = predict_in_batches(&bf16_engine, cases, 32);
    let (mut agree, mut worst, mut margin) = (0, 0f32, 0f64);
    for (w, g) in want.iter().zip(&got) {
        assert!(g.logits.iter().all(|x| x.is_finite()), "bf16: {g:?}");
        agree += usize::from(w.top == g.top);
        worst = worst.max(max_diff(&g.logits, &w.logits));
        margin += f64::from(((g.logits[1] - g.logits[0]) - (w.logits[1] - w.logits[0])).abs());
    }
    let share = agree as f64 / cases.len() as f64;
    eprintln!(
        "bf16 ({path}): labels agree with f32 on {agree}/{} ({:.2}%), worst logit difference \
         {worst:e}, mean margin change {:.4}",
        cases.len(),
        share * 100.0,
        margin / cases.len() as f64
    );
    assert!(
        share >= 0.995,
        "bf16: only {agree}/{} labels agree",
        cases.len()
    );
    assert!(
        worst > 0.0,
        "bf16 gave f32's logits to the bit: nothing was rounded"
    );
    assert!(worst < 0.25, "bf16 logits off by {worst}");
}

/// `--quantize q8` (int8 encoder weights and activations): labels against PyTorch f32 on
/// the dev set and edge cases. The fixture's head is weak (75% accuracy; 134 of 872 dev
/// scores are under 0.6), so the few flips are all near 50/50; 98% is the floor kept
/// here, the measured share is printed. The mean change of the logit margin is the
/// steadier measure of rounding error: on SST-2 dev against bert-cli f32 it was 0.043
/// before q8 was calibrated (the scales balanced between input and weight) and 0.026
/// after (0.026 here too); the bar sits between the two, so a calibration that stopped
/// reaching the layers fails it.
#[test]
fn q8_keeps_labels() {
    let reference = reference("minilm-sst2");
    let cases = reference["cases"].as_array().unwrap();
    let engine = engine_with(
        &minilm_sst2(),
        &EngineOptions {
            quantize_q8: true,
            ..Default::default()
        },
    )
    .unwrap();
    let predictions = predict_in_batches(&engine, cases, 32);
    let (mut agree, mut worst, mut margin_error) = (0, 0f32, 0f64);
    for (c, p) in cases.iter().zip(&predictions) {
        let want = floats(&c["logits"]);
        let same = p.top as u64 == c["label"].as_u64().unwrap();
        agree += usize::from(same);
        worst = worst.max(max_diff(&p.logits, &want));
        margin_error += f64::from(((p.logits[1] - p.logits[0]) - (want[1] - want[0])).abs());
        let margin = (want[0] - want[1]).abs();
        if margin > 0.5 {
            assert!(same, "q8 flipped a confident case {}: {p:?}", c["name"]);
        }
    }
    let share = agree as f64 / cases.len() as f64;
    let margin_error = margin_error / cases.len() as f64;
    eprintln!(
        "q8: labels agree on {agree}/{} ({:.2}%), worst logit difference {worst:e}, mean \
         margin change {margin_error:.4}",
        cases.len(),
        share * 100.0
    );
    // Activations in bytes (VNNI) moved it by 0.026 calibrated; in words (elsewhere), with
    // only the weights' rounding left, by 0.017.
    let (bound, measured) = if bert_cli::kernels::cpu::vnni() {
        (0.035, 0.026)
    } else {
        (0.022, 0.017)
    };
    assert!(
        margin_error < bound,
        "q8: the logit margin moved by {margin_error:.4} on average; calibrated, it was {measured}"
    );
    assert!(
        share >= 0.98,
        "q8: only {agree}/{} labels agree",
        cases.len()
    );
    assert!(worst < 0.5, "q8 logits off by {worst}");
    // The same options refuse a GPU number format, instead of silently ignoring one.
    let err = load_error(
        &minilm_sst2(),
        &EngineOptions {
            quantize_q8: true,
            dtype: Some(DType::F16),
            ..Default::default()
        },
    );
    assert!(err.contains("--quantize q8"), "{err}");
}

/// q8 on the portable path (CPUs without AVX2) against the AVX2 kernels, through the
/// binary: both quantize activations to words, so only f32 rounding may separate them.
/// Their calibration once did: the portable path computes a padded batch's padding rows
/// and recorded their ranges too, which moved the first 150 cases' logits by up to 0.016
/// (mean 0.0049; over all 883, 0.025 and one label); calibrated one text per pass, these
/// 150 by 7.2e-4 (mean 1.5e-4). 150 cases: the portable run is the slow part.
#[test]
fn q8_portable_path_matches_the_kernels() {
    use bert_cli::kernels::cpu;
    if !cpu::fast_kernels() {
        say("q8_portable_path_matches_the_kernels: skipped: this CPU has no AVX2 (or BERT_CLI_PORTABLE is set), so both runs would take the portable path");
        return;
    }
    if cpu::vnni() {
        say("q8_portable_path_matches_the_kernels: skipped: this CPU's VNNI kernel takes byte activations, the portable code words, so they differ by design");
        return;
    }
    let cases = reference("minilm-sst2");
    let cases = &cases["cases"].as_array().unwrap()[..150];
    let input: String = cases
        .iter()
        .map(|c| format!("{}\n", c["text"].as_str().unwrap().replace('\n', " ")))
        .collect();
    let run = |portable: bool| -> Vec<Vec<f32>> {
        let mut cmd = bert_cli();
        // Only the variable under test picks the path.
        cmd.env_remove("BERT_CLI_CANDLE_OPS")
            .env_remove("BERT_CLI_FORCE_KERNELS");
        if portable {
            cmd.env("BERT_CLI_PORTABLE", "1");
        } else {
            cmd.env_remove("BERT_CLI_PORTABLE");
        }
        let out = run_with_stdin(
            cmd.args([
                "classify",
                "--quantize",
                "q8",
                "--format",
                "jsonl",
                "--all-scores",
                "--model",
            ])
            .arg(minilm_sst2()),
            input.as_bytes(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                floats(&v["logits"])
            })
            .collect()
    };
    let (portable, kernels) = (run(true), run(false));
    assert_eq!((portable.len(), kernels.len()), (cases.len(), cases.len()));
    let (mut worst, mut mean) = (0f32, 0f64);
    for (i, (p, k)) in portable.iter().zip(&kernels).enumerate() {
        let d = max_diff(p, k);
        worst = worst.max(d);
        mean += f64::from(d) / cases.len() as f64;
        if (k[1] - k[0]).abs() > 0.01 {
            assert_eq!(p[1] > p[0], k[1] > k[0], "case {i}: {p:?} vs {k:?}");
        }
    }
    eprintln!(
        "q8, portable path against the kernels: worst logit difference {worst:e}, mean {mean:e}"
    );
    assert!(worst < 3e-3 && mean < 1e-3, "worst {worst}, mean {mean}");
}

#[test]
fn long_input_is_truncated_to_512_tokens() {
    let engine = engine(&minilm_sst2());
    assert_eq!(engine.max_length, 512);
    let text = "word ".repeat(3000);
    let e = engine.encode(&text).unwrap();
    assert_eq!(e.ids.len(), 512);
    assert_eq!(
        (e.ids[0], e.ids[511]),
        (101, 102),
        "[CLS] ... [SEP] survive truncation"
    );
    let short = engine_with(
        &minilm_sst2(),
        &EngineOptions {
            max_length: Some(16),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(short.encode(&text).unwrap().ids.len(), 16);
    let err = engine_with(
        &minilm_sst2(),
        &EngineOptions {
            max_length: Some(513),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("512 tokens (max_position_embeddings 512)"),
        "{err:#}"
    );
}

/// Post-softmax attention of every layer and head within 1e-5 of PyTorch, rows summing to 1.
#[test]
fn attention_probabilities_match_pytorch() {
    assert_attention_matches_pytorch(&engine(&minilm_sst2()));
}

/// pytorch_model.bin, vocab.txt only, gelu_new, multi-label sigmoid scoring.
#[test]
fn pytorch_bin_with_vocab_txt_matches() {
    check_tiny("tiny-bin", Scoring::Sigmoid, &["joy", "anger", "surprise"]);
}

/// No "bert." prefix, LayerNorm gamma/beta, relu, a single logit.
#[test]
fn legacy_names_and_single_label_match() {
    check_tiny("tiny-legacy", Scoring::Sigmoid, &["LABEL_0"]);
}

fn check_tiny(name: &str, scoring: Scoring, labels: &[&str]) {
    let engine = engine(&committed(name));
    assert_eq!(engine.scoring, scoring);
    assert_eq!(engine.labels, labels);
    let reference = reference(name);
    for c in reference["cases"].as_array().unwrap() {
        let e = engine.encode(c["text"].as_str().unwrap()).unwrap();
        assert_eq!(e.ids, ids(&c["ids"]), "{name}: ids for {:?}", c["text"]);
        let p = &engine.predict(&[&e], false).unwrap()[0];
        let d = max_diff(&p.logits, &floats(&c["logits"]));
        assert!(d < 1e-4, "{name}: {:?} off by {d}", c["text"]);
        for (&prob, &logit) in p.probs.iter().zip(&p.logits) {
            assert!((prob - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-6);
        }
    }
}

/// A folder with only vocab.txt (no tokenizer.json) tokenizes exactly like tokenizer.json.
#[test]
fn vocab_txt_tokenizer_equals_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(minilm_sst2().join(f), dir.path().join(f)).unwrap();
    }
    let from_vocab = engine(dir.path());
    let reference = reference("minilm-sst2");
    for c in reference["cases"].as_array().unwrap() {
        let e = from_vocab.encode(c["text"].as_str().unwrap()).unwrap();
        assert_eq!(
            e.ids,
            ids(&c["ids"]),
            "vocab.txt tokenizer differs on {}",
            c["name"]
        );
    }
}

#[test]
fn bare_encoder_is_refused_unless_allowed() {
    let err = engine_with(&minilm_encoder(), &EngineOptions::default())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("no classification head"), "{msg}");
    assert!(
        msg.contains("--allow-untrained-head") && msg.contains("JeremiahZ/bert-base-uncased-sst2"),
        "{msg}"
    );

    let opts = EngineOptions {
        allow_untrained_head: true,
        ..Default::default()
    };
    let a = engine_with(&minilm_encoder(), &opts).unwrap();
    let b = engine_with(&minilm_encoder(), &opts).unwrap();
    assert!(!a.head_is_trained());
    let e = a.encode("the same every run").unwrap();
    let (pa, pb) = (
        &a.predict(&[&e], false).unwrap()[0],
        &b.predict(&[&e], false).unwrap()[0],
    );
    assert_eq!(
        pa.logits, pb.logits,
        "the seeded head must be deterministic"
    );
    assert_eq!(pa.logits.len(), 2);
}

/// Writes a copy of the fixture with its tensors changed by `edit`.
fn edited_fixture(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors =
        safetensors::load(minilm_sst2().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm_sst2().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let dir = edited_fixture(|t| {
        t.remove("bert.encoder.layer.3.attention.self.key.weight");
    });
    let msg = load_error(dir.path(), &EngineOptions::default());
    assert!(
        msg.contains("encoder.layer.3.attention.self.key.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("model.safetensors"),
        "the file is named: {msg}"
    );

    let dir = edited_fixture(|t| {
        t.insert(
            "bert.encoder.layer.0.output.dense.bias".into(),
            Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_error(dir.path(), &EngineOptions::default());
    assert!(
        msg.contains("encoder.layer.0.output.dense.bias") && msg.contains("shape"),
        "{msg}"
    );
}

#[test]
fn bad_config_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_error(dir.path(), &EngineOptions::default());
    assert!(msg.contains("no config.json"), "{msg}");
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 3").unwrap();
    std::fs::write(dir.path().join("model.safetensors"), "").unwrap();
    std::fs::write(dir.path().join("vocab.txt"), "[CLS]\n[SEP]\n").unwrap();
    let msg = load_error(dir.path(), &EngineOptions::default());
    assert!(msg.contains("config.json"), "{msg}");
    let msg = load_error(Path::new("/no/such/folder"), &EngineOptions::default());
    assert!(
        msg.contains("/no/such/folder") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn labels_flag_renames_and_checks_count() {
    let opts = EngineOptions {
        labels: Some(vec!["bad".into(), "good".into()]),
        ..Default::default()
    };
    assert_eq!(
        engine_with(&minilm_sst2(), &opts).unwrap().labels,
        ["bad", "good"]
    );
    let opts = EngineOptions {
        labels: Some(vec!["one".into()]),
        ..Default::default()
    };
    let msg = load_error(&minilm_sst2(), &opts);
    assert!(
        msg.contains("1 labels") && msg.contains("2 outputs"),
        "{msg}"
    );
}
