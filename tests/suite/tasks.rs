//! Sentence pairs, zero-shot, reranking and chunked long texts against PyTorch
//! (`scripts/make_tasks_reference.py`): token ids and types identical, logits and scores
//! within 1e-4, the same windows, the same order.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use bert_cli::engine::{Engine, EngineOptions, Prediction};
use bert_cli::input::Item;
use bert_cli::task::{Aggregate, LongText, Task, ZeroShot};
use bert_cli::tokenize::{PairTruncation, TextTokenizer, TokenizerFiles};
use common::{committed, floats, ids, max_diff, minilm_sst2, reference};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn model_dir(name: &str) -> PathBuf {
    match name {
        "minilm-sst2" => minilm_sst2(),
        "minilm-rerank" => common::fixtures().join("minilm-rerank"),
        family => committed("families").join(family),
    }
}

/// Engines by (model, max length), loaded once.
struct Engines(HashMap<(String, usize), Engine>);

impl Engines {
    fn get(&mut self, model: &str, max_length: usize) -> &Engine {
        self.0
            .entry((model.to_string(), max_length))
            .or_insert_with(|| {
                let opts = EngineOptions {
                    max_length: Some(max_length),
                    ..Default::default()
                };
                common::engine_with(&model_dir(model), &opts).unwrap()
            })
    }
}

/// Runs `task` on one record the way the pipeline does: plan, one batch, combine.
fn run_task(
    engine: &Engine,
    task: &Task,
    text: &str,
) -> (Vec<Vec<u32>>, Vec<Prediction>, Prediction) {
    let item = Item {
        number: 1,
        text: text.to_string(),
        ..Item::default()
    };
    let planned = task.plan(engine, &item, false).unwrap();
    let inputs: Vec<_> = planned.inputs.iter().collect();
    let parts = engine.predict(&inputs, false).unwrap();
    let combined = task.combine(&parts).unwrap();
    let ids = planned.inputs.iter().map(|e| e.ids.clone()).collect();
    (ids, parts, combined)
}

/// The `pairs` cases of reference `name`: ids and token types identical, logits within
/// `TOL`. Returns how many were truncated and the worst logit difference.
fn check_pairs(name: &str) -> (usize, usize, f32) {
    let reference = reference(name);
    let mut engines = Engines(HashMap::new());
    let cases = reference["pairs"].as_array().unwrap();
    let (mut truncated, mut worst) = (0, 0f32);
    for c in cases {
        let name = c["model"].as_str().unwrap();
        let (a, b) = (
            c["text"].as_str().unwrap(),
            c["text_pair"].as_str().unwrap(),
        );
        let max_length = c["max_length"].as_u64().unwrap() as usize;
        let engine = engines.get(name, max_length);
        let enc = engine
            .encode_pair(a, b, PairTruncation::LongestFirst)
            .unwrap();
        assert_eq!(
            enc.ids,
            ids(&c["ids"]),
            "{name} ids, max {max_length}: {a:.40} / {b:.40}"
        );
        // ModernBERT reads no token types (transformers' tokenizer returns none, and the
        // reference holds zeros); its tokenizer.json still numbers the second text 1.
        if name != "modernbert" {
            assert_eq!(enc.type_ids, ids(&c["type_ids"]), "{name} token types");
        }
        truncated += usize::from(enc.truncated);
        let p = engine.predict(&[&enc], false).unwrap();
        let d = max_diff(&p[0].logits, &floats(&c["logits"]));
        assert!(d < TOL, "{name} logits differ by {d}: {a:.40} / {b:.40}");
        worst = worst.max(d);
        // Where the second text starts is marked: after [SEP] (BERT) or </s></s> (RoBERTa).
        if !b.is_empty() {
            let start = enc.pair_start.unwrap_or(enc.ids.len());
            assert!(
                start > 1 && start < enc.ids.len(),
                "{name}: second text at {start}"
            );
        }
    }
    (cases.len(), truncated, worst)
}

#[test]
fn pairs_match_pytorch_including_longest_first_truncation() {
    let (n, truncated, worst) = check_pairs("tasks");
    assert!(truncated >= 12, "cases needing truncation: {truncated}");
    common::say(&format!(
        "pairs: {n} cases on BERT, RoBERTa, DeBERTa-v3 match PyTorch ({truncated} truncated; worst logit {worst:.1e})"
    ));
}

#[test]
fn pairs_match_pytorch_on_modernbert_and_bart() {
    for family in ["modernbert", "bart"] {
        let (n, truncated, worst) = check_pairs(&format!("family-{family}"));
        assert!(n >= 10, "{family}: {n} pair cases");
        common::say(&format!(
            "pairs on {family}: {n} cases match PyTorch ({truncated} truncated; worst logit {worst:.1e})"
        ));
    }
}

/// The `zero_shot` cases of reference `name` on the model in `dir`: labels ranked as
/// transformers' pipeline ranks them, scores within `TOL`. Returns the cases and the
/// worst score difference.
fn check_zero_shot(name: &str, dir: &std::path::Path) -> (usize, f32) {
    let reference = reference(name);
    let engine = common::engine_with(dir, &EngineOptions::default()).unwrap();
    let cases = reference["zero_shot"].as_array().unwrap();
    let mut worst = 0f32;
    for c in cases {
        let labels: Vec<String> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        let zs = ZeroShot::new(
            labels.clone(),
            c["template"].as_str().unwrap(),
            c["multi_label"].as_bool().unwrap(),
            &engine.labels,
        )
        .unwrap();
        let task = Task::ZeroShot(zs);
        let text = c["text"].as_str().unwrap();
        let (_, _, p) = run_task(&engine, &task, text);
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| p.probs[b].total_cmp(&p.probs[a]));
        let ranked: Vec<&str> = order.iter().map(|&i| labels[i].as_str()).collect();
        let want: Vec<&str> = c["ranked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ranked, want, "{name}: label order for {text:.50}");
        let scores: Vec<f32> = order.iter().map(|&i| p.probs[i]).collect();
        let d = max_diff(&scores, &floats(&c["scores"]));
        assert!(
            d < TOL,
            "{name}: scores differ by {d} for {text:.50} ({c:?})"
        );
        worst = worst.max(d);
    }
    (cases.len(), worst)
}

#[test]
fn zero_shot_matches_the_transformers_pipeline() {
    let (n, worst) = check_zero_shot("tasks", &committed("families").join("deberta-v3"));
    common::say(&format!(
        "zero-shot: {n} cases (single-, multi- and one-label, two templates) match the pipeline (worst score {worst:.1e})"
    ));
}

/// BART's labels run contradiction, neutral, entailment (bart-large-mnli's order): the
/// entailment logit is found by name, not position.
#[test]
fn zero_shot_on_bart_matches_the_transformers_pipeline() {
    let (n, worst) = check_zero_shot("family-bart", &committed("families").join("bart"));
    assert!(n >= 20, "{n} BART zero-shot cases");
    common::say(&format!(
        "zero-shot on BART: {n} cases match the pipeline (worst score {worst:.1e})"
    ));
}

#[test]
fn rerank_matches_pytorch_scores_and_order() {
    let reference = reference("tasks");
    let r = &reference["rerank"];
    let mut engine =
        common::engine_with(&model_dir("minilm-rerank"), &EngineOptions::default()).unwrap();
    engine.scoring = engine
        .cross_encoder_scoring
        .unwrap_or(bert_cli::models::config::Scoring::Sigmoid);
    let task = Task::Rerank {
        query: r["query"].as_str().unwrap().to_string(),
    };
    let docs = r["documents"].as_array().unwrap();
    let mut scores = Vec::new();
    let mut logits = Vec::new();
    for d in docs {
        let (_, _, p) = run_task(&engine, &task, d.as_str().unwrap());
        scores.push(p.probs[0]);
        logits.push(p.logits[0]);
    }
    let d = max_diff(&logits, &floats(&r["logits"]));
    assert!(d < TOL, "logits differ by {d}");
    let d2 = max_diff(&scores, &floats(&r["scores"]));
    assert!(d2 < TOL, "scores differ by {d2}");
    common::say(&format!(
        "rerank: {} documents, same order; worst logit {d:.1e}, score {d2:.1e}",
        docs.len()
    ));
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let want: Vec<usize> = ids(&r["order"]).into_iter().map(|i| i as usize).collect();
    assert_eq!(order, want);
}

#[test]
fn chunk_windows_and_pooled_scores_match_pytorch() {
    let reference = reference("tasks");
    let mut engines = Engines(HashMap::new());
    let cases = reference["chunks"].as_array().unwrap();
    let (mut worst, mut windows_seen) = (0f32, 0);
    for c in cases {
        let name = c["model"].as_str().unwrap();
        let max_length = c["max_length"].as_u64().unwrap() as usize;
        let stride = c["stride"].as_u64().unwrap() as usize;
        let engine = engines.get(name, max_length);
        let text = c["text"].as_str().unwrap();
        let windows = c["windows"].as_array().unwrap();
        for (how, key) in [(Aggregate::Mean, "mean"), (Aggregate::Max, "max")] {
            let task = Task::Classify(LongText::Chunk {
                stride,
                aggregate: how,
            });
            let (got_ids, parts, pooled) = run_task(engine, &task, text);
            let want_ids: Vec<Vec<u32>> = windows.iter().map(|w| ids(&w["ids"])).collect();
            assert_eq!(
                got_ids, want_ids,
                "{name} windows, max {max_length} stride {stride}"
            );
            for (p, w) in parts.iter().zip(windows) {
                let d = max_diff(&p.probs, &floats(&w["probs"]));
                assert!(d < TOL, "{name} window probabilities differ by {d}");
            }
            let d = max_diff(&pooled.probs, &floats(&c[key]));
            assert!(d < TOL, "{name} {key} differs by {d}");
            worst = worst.max(d);
            windows_seen += parts.len();
        }
    }
    common::say(&format!(
        "chunks: {} cases, {} windows equal to the tokenizer's; worst pooled probability {worst:.1e}",
        cases.len(),
        windows_seen / 2
    ));
}

/// Random texts from the SST-2-like words of the references, with runs of spaces, tabs,
/// newlines, punctuation and non-ASCII, long enough to be cut into many pieces.
fn random_texts(seed: u64, count: usize) -> Vec<String> {
    let words: Vec<&str> =
        "the film ' s a charming , and often affecting journey . it ' s slow -- very \
        slow unflinchingly bleak desperate café naïve 東京 😀 don't U.S.A. 3.5 x"
            .split(' ')
            .collect();
    let seps = [" ", " ", " ", "  ", "\t", "\n", " \u{3000}", "\u{a0}", ""];
    let mut state = seed;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..count)
        .map(|_| {
            let n = 20 + next(400);
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(words[next(words.len())]);
                s.push_str(seps[next(seps.len())]);
            }
            s
        })
        .collect()
}

fn tokenizer(dir: &std::path::Path, max_length: usize) -> TextTokenizer {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    TextTokenizer::load(
        &TokenizerFiles::Json(dir.join("tokenizer.json")),
        max_length,
        vocab,
    )
    .unwrap()
}

/// Every committed family fixture and the MiniLM one: each tokenizer family once.
fn every_fixture() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = common::FAMILIES
        .iter()
        .map(|f| committed("families").join(f))
        .collect();
    dirs.push(minilm_sst2());
    dirs
}

#[test]
fn long_texts_tokenized_in_pieces_give_the_same_tokens_as_whole() {
    let dirs = every_fixture();
    let texts = random_texts(7, 40);
    let mut checked = 0;
    for dir in &dirs {
        let whole = tokenizer(dir, 64);
        for bytes in [1, 7, 50] {
            let pieces = tokenizer(dir, 64).with_piece_bytes(bytes);
            for t in &texts {
                let (a, b) = (whole.encode(t).unwrap(), pieces.encode(t).unwrap());
                assert_eq!(a.ids, b.ids, "{} pieces of {bytes}: {t:?}", dir.display());
                assert_eq!(a.offsets, b.offsets, "{} offsets", dir.display());
                assert_eq!(a.truncated, b.truncated);
                let (a, b) = (
                    whole.windows(t, 8, true).unwrap(),
                    pieces.windows(t, 8, true).unwrap(),
                );
                let ta: Vec<_> = a.iter().map(|e| (&e.tokens, &e.offsets)).collect();
                let tb: Vec<_> = b.iter().map(|e| (&e.tokens, &e.offsets)).collect();
                assert_eq!(ta, tb, "{} window tokens, pieces of {bytes}", dir.display());
                let ia: Vec<_> = a.iter().map(|e| &e.ids).collect();
                let ib: Vec<_> = b.iter().map(|e| &e.ids).collect();
                assert_eq!(ia, ib, "{} windows, pieces of {bytes}", dir.display());
                let (a, b) = (
                    whole
                        .encode_pair(t, "x y", PairTruncation::LongestFirst)
                        .unwrap(),
                    pieces
                        .encode_pair(t, "x y", PairTruncation::LongestFirst)
                        .unwrap(),
                );
                assert_eq!(a.ids, b.ids, "{} pair", dir.display());
                checked += 1;
            }
        }
    }
    common::say(&format!(
        "pieces: {checked} texts x {} tokenizers, cut every 1/7/50 bytes, tokenize as whole",
        dirs.len()
    ));
}

#[test]
fn both_texts_over_the_limit_keep_transformers_odd_split() {
    // Two texts over the limit, the second longer in tokens than the first though both are
    // read only in part: the odd last token goes to the longer one, as in transformers.
    let tok = tokenizer(&minilm_sst2(), 9).with_piece_bytes(4);
    let a = "one two three four five six seven eight nine ten";
    let b = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu";
    let whole = tokenizer(&minilm_sst2(), 9);
    let (x, y) = (
        tok.encode_pair(a, b, PairTruncation::LongestFirst).unwrap(),
        whole
            .encode_pair(a, b, PairTruncation::LongestFirst)
            .unwrap(),
    );
    assert_eq!(x.ids, y.ids);
    assert!(x.truncated);
}

#[test]
fn stride_at_or_over_the_window_is_an_error() {
    let tok = tokenizer(&minilm_sst2(), 16);
    let err = tok.windows("a b c", 14, false).unwrap_err().to_string();
    assert!(
        err.contains("--stride 14 must be less than the 14 text tokens"),
        "{err}"
    );
    assert!(tok.windows("a b c", 13, false).is_ok());
}

#[test]
fn zero_shot_refuses_models_and_labels_it_cannot_use() {
    let electra = vec!["negative".to_string(), "neutral".into(), "positive".into()];
    let err = ZeroShot::new(vec!["a".into()], "{}", false, &electra)
        .unwrap_err()
        .to_string();
    assert!(err.contains("name no entailment"), "{err}");
    let nli = vec![
        "entailment".to_string(),
        "neutral".into(),
        "contradiction".into(),
    ];
    let err = ZeroShot::new(vec!["a".into(), "a".into()], "{}", false, &nli)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    // `-l "a, b"` means a and b, as transformers strips each label.
    let err = ZeroShot::new(vec!["a".into(), " a".into()], "{}", false, &nli)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    let z = ZeroShot::new(vec!["a".into(), " b ".into()], "{}", false, &nli).unwrap();
    assert_eq!(z.labels, ["a", "b"]);
    let err = ZeroShot::new(vec!["a".into()], "no slot", false, &nli)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no {}"), "{err}");
    let z = ZeroShot::new(vec!["a".into()], "It is {}.", false, &nli).unwrap();
    assert!(z.multi_label, "one label is judged on its own");
    assert_eq!((z.entailment, z.contradiction), (0, 2));
    let z = ZeroShot::new(
        vec!["a".into(), "b".into()],
        "{}",
        false,
        &[
            "contradiction".into(),
            "neutral".into(),
            "ENTAILMENT".into(),
        ],
    )
    .unwrap();
    assert_eq!((z.entailment, z.contradiction), (2, 0));
}

// ---------------------------------------------------------------------------------------
// The commands, end to end.

fn jsonl(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn classify_reads_pairs_from_tabs_fields_columns_and_arguments() {
    let m = minilm_sst2();
    let lines = b"a fine film\tbut the ending drags\nno tab here\nawful\tjust awful\n";
    let out = common::classify_with(&m, &["--pair", "--format", "jsonl"], lines);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["text_pair"], "but the ending drags");
    let err = rows[1]["error"].as_str().unwrap();
    assert!(err.contains("stdin line 2: no tab"), "{err}");
    assert_eq!(rows[2]["record"], 3);
    // The same pair as arguments, as a JSONL field pair and as CSV columns: same score;
    // as one text: a different one (the second text is read).
    let args = common::classify_with(
        &m,
        &[
            "--format",
            "jsonl",
            "--text-pair",
            "but the ending drags",
            "a fine film",
        ],
        b"",
    );
    assert_eq!(jsonl(&args)[0]["score"], rows[0]["score"]);
    let json = b"{\"p\": \"a fine film\", \"h\": \"but the ending drags\"}\n{\"p\": \"x\"}\n";
    let out = common::classify_with(
        &m,
        &[
            "--input-format",
            "jsonl",
            "--field",
            "p",
            "--pair-field",
            "h",
            "--format",
            "jsonl",
        ],
        json,
    );
    let rows_j = jsonl(&out);
    assert_eq!(rows_j[0]["h"], "but the ending drags");
    assert_eq!(rows_j[0]["prediction"]["score"], rows[0]["score"]);
    let err = rows_j[1]["prediction"]["error"].as_str().unwrap();
    assert!(
        err.contains("no field \"h\"") && err.contains("--pair-field"),
        "{err}"
    );
    let csv = b"premise,hypothesis\na fine film,but the ending drags\n";
    let out = common::classify_with(
        &m,
        &[
            "--input-format",
            "csv",
            "--column",
            "premise",
            "--pair-column",
            "hypothesis",
            "--format",
            "jsonl",
        ],
        csv,
    );
    // The CSV row comes back as an object of its columns, the prediction under its key.
    let row = &jsonl(&out)[0];
    assert_eq!(row["prediction"]["score"], rows[0]["score"]);
    assert_eq!(row["hypothesis"], "but the ending drags");
    let single = common::classify_with(&m, &["--format", "jsonl", "a fine film"], b"");
    assert_ne!(jsonl(&single)[0]["score"], rows[0]["score"]);
    // CSV output of pairs has the second text too.
    let out = common::classify_with(&m, &["--pair", "--format", "csv"], b"a\tb\n");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("record,label,score,text,text_pair\n1,"),
        "{text}"
    );
    assert!(text.trim_end().ends_with(",a,b"), "{text}");
}

#[test]
fn pair_flags_that_cannot_apply_are_refused() {
    let m = minilm_sst2();
    for (args, want) in [
        (
            vec!["--pair", "--input-format", "jsonl"],
            "--pair splits plain lines",
        ),
        (
            vec!["--pair-field", "h"],
            "--pair-field names a JSONL field",
        ),
        (
            vec!["--pair", "--long-text", "chunk"],
            "--long-text chunk splits single texts",
        ),
        (
            vec!["--stride", "4"],
            "--stride and --aggregate describe --long-text chunk",
        ),
    ] {
        let out = common::classify_with(&m, &args, b"a\tb\n");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn zero_shot_command_matches_the_pipeline_and_refuses_non_nli_models() {
    let reference = reference("tasks");
    let case = reference["zero_shot"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["template"] == "This example is {}." && c["multi_label"] == false)
        .unwrap()
        .clone();
    let labels: Vec<&str> = case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let dir = committed("families").join("deberta-v3");
    let joined = labels.join(",");
    let text = case["text"].as_str().unwrap();
    let mut stdin = format!("{text}\n").into_bytes();
    stdin.extend_from_slice(b"\xff bad utf-8\n");
    let out = common::command_with(
        "zero-shot",
        &dir,
        &["--labels", &joined, "--format", "jsonl"],
        &stdin,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let rows = jsonl(&out);
    let ranked: Vec<&str> = rows[0]["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = case["ranked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ranked, want);
    let scores: Vec<f32> = rows[0]["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["score"].as_f64().unwrap() as f32)
        .collect();
    assert!(max_diff(&scores, &floats(&case["scores"])) < TOL);
    assert!(rows[1]["error"]
        .as_str()
        .unwrap()
        .contains("not valid UTF-8"));

    let out = common::command_with(
        "zero-shot",
        &committed("families").join("electra"),
        &["--labels", "a,b", "x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("name no entailment"),
        "{}",
        stderr(&out)
    );
    // Naming the model's labels makes it usable.
    let out = common::command_with(
        "zero-shot",
        &committed("families").join("electra"),
        &[
            "--labels",
            "a,b",
            "--model-labels",
            "contradiction,neutral,entailment",
            "x",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn rerank_command_prints_documents_best_first_with_their_index() {
    let reference = reference("tasks");
    let r = &reference["rerank"];
    let docs: Vec<&str> = r["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let stdin = docs.join("\n") + "\n";
    let model = model_dir("minilm-rerank");
    let query = r["query"].as_str().unwrap();
    let out = common::command_with(
        "rerank",
        &model,
        &["--query", query, "--format", "jsonl"],
        stdin.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = jsonl(&out);
    let order: Vec<u32> = rows
        .iter()
        .map(|x| x["index"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(order, ids(&r["order"]));
    let want = floats(&r["scores"]);
    for (rank, row) in rows.iter().enumerate() {
        let i = row["index"].as_u64().unwrap() as usize;
        assert_eq!(row["rank"], rank + 1);
        assert_eq!(row["text"], docs[i]);
        assert!((row["score"].as_f64().unwrap() as f32 - want[i]).abs() < TOL);
    }
    let out = common::command_with(
        "rerank",
        &model,
        &[
            "--query",
            query,
            "--top-k",
            "3",
            "--raw-scores",
            "--format",
            "csv",
        ],
        stdin.as_bytes(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "rank,index,score,text");
    let best = ids(&r["order"])[0] as usize;
    let raw = floats(&r["logits"])[best];
    let fields: Vec<&str> = lines[1].splitn(4, ',').collect();
    assert_eq!(fields[1], best.to_string());
    assert!(
        (fields[2].parse::<f32>().unwrap() - raw).abs() < TOL,
        "raw logit {raw}: {}",
        lines[1]
    );
    // Rows and objects that come back whole carry their index too (they had only the
    // rank, so nothing tied a result to its input row), and -k 0 keeps every one (it
    // printed nothing).
    let dir = tempfile::tempdir().unwrap();
    let rerank_file = |name: &str, body: String, format: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let args = [
            "--query",
            query,
            "-i",
            path.to_str().unwrap(),
            "-f",
            format,
            "-k",
            "0",
        ];
        let out = common::command_with("rerank", &model, &args, b"");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    };
    let body: String = docs
        .iter()
        .map(|d| format!("\"{}\",x\n", d.replace('"', "\"\"")))
        .collect();
    let out = rerank_file("docs.csv", format!("text,other\n{body}"), "csv");
    let mut rdr = csv::Reader::from_reader(&out.stdout[..]);
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        ["text", "other", "rank", "index", "score", "error"]
    );
    let indices: Vec<u32> = rdr
        .records()
        .map(|r| r.unwrap()[3].parse().unwrap())
        .collect();
    assert_eq!(indices, ids(&r["order"]));
    let body: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d, "other": "x" }).to_string() + "\n")
        .collect();
    let out = rerank_file("docs.jsonl", body, "jsonl");
    let indices: Vec<u32> = jsonl(&out)
        .iter()
        .map(|x| x["prediction"]["index"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(indices, ids(&r["order"]));

    // A one-output cross-encoder is required.
    let out = common::command_with("rerank", &minilm_sst2(), &["--query", "q", "d"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("rerank needs a cross-encoder with one relevance score"));
}

#[test]
fn chunk_mode_reads_a_long_text_whole_and_reports_windows() {
    let reference = reference("tasks");
    let case = reference["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "minilm-sst2" && c["stride"] == 16)
        .unwrap()
        .clone();
    let text = case["text"].as_str().unwrap();
    let m = minilm_sst2();
    let dump = std::env::temp_dir().join(format!("bert-cli-chunks-{}.json", std::process::id()));
    let out = common::classify_with(
        &m,
        &[
            "--long-text",
            "chunk",
            "--stride",
            "16",
            "--max-length",
            "64",
            "--all-scores",
            "--format",
            "jsonl",
            "--dump-attention",
            dump.to_str().unwrap(),
            "--attention-layers",
            "0",
        ],
        format!("{text}\nshort one\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = jsonl(&out);
    let windows = case["windows"].as_array().unwrap().len();
    assert_eq!(rows[0]["chunks"], windows);
    assert_eq!(rows[0]["truncated"], false);
    assert_eq!(rows[1]["chunks"], 1);
    let scores: Vec<f32> = ["NEGATIVE", "POSITIVE"]
        .iter()
        .map(|l| rows[0]["scores"][l].as_f64().unwrap() as f32)
        .collect();
    assert!(max_diff(&scores, &floats(&case["mean"])) < TOL);
    // The dump has one entry per window, each saying which.
    let entries: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let _ = std::fs::remove_file(&dump);
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), windows + 1);
    assert_eq!(entries[1]["part"], 1);
    assert_eq!(entries[1]["parts"], windows);
    assert_eq!(
        ids(&entries[1]["token_ids"]),
        ids(&case["windows"][1]["ids"])
    );
    // A stride the window cannot hold is refused before any input is read.
    let out = common::classify_with(
        &m,
        &[
            "--long-text",
            "chunk",
            "--stride",
            "62",
            "--max-length",
            "64",
        ],
        b"x\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--stride 62 must be less than the 62 text tokens"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pair_dump_marks_where_the_second_text_starts() {
    let m = minilm_sst2();
    let dump = std::env::temp_dir().join(format!("bert-cli-pair-{}.json", std::process::id()));
    let out = common::classify_with(
        &m,
        &[
            "--text-pair",
            "the second",
            "the first one",
            "--dump-attention",
            dump.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let entries: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let _ = std::fs::remove_file(&dump);
    let e = &entries[0];
    assert_eq!(e["text_pair"], "the second");
    let tokens: Vec<&str> = e["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tokens,
        ["[CLS]", "the", "first", "one", "[SEP]", "the", "second", "[SEP]"]
    );
    assert_eq!(e["sentence_b_start"], 5);
}

#[test]
fn encodings_equal_the_tokenizers_crates_own_with_truncation() {
    // Ours truncates per call (pieces, pairs, windows); the tokenizers crate's own
    // `encode` with truncation set is the reference: ids, types, tokens and offsets.
    let dirs = every_fixture();
    let texts = random_texts(11, 12);
    for dir in &dirs {
        let ours = tokenizer(dir, 40);
        let mut theirs = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        theirs
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 40,
                ..Default::default()
            }))
            .unwrap();
        theirs.with_padding(None);
        for (i, t) in texts.iter().enumerate() {
            let short = &t[..t.char_indices().nth(60).map_or(t.len(), |(b, _)| b)];
            for text in [short, t.as_str()] {
                let (a, b) = (
                    ours.encode(text).unwrap(),
                    theirs.encode_char_offsets(text, true).unwrap(),
                );
                assert_eq!(a.ids, b.get_ids(), "{} {i}", dir.display());
                assert_eq!(a.type_ids, b.get_type_ids());
                assert_eq!(a.tokens, b.get_tokens());
                assert_eq!(a.offsets, b.get_offsets(), "{} offsets {i}", dir.display());
            }
            let (a, b) = (
                ours.encode_pair(short, t, PairTruncation::LongestFirst)
                    .unwrap(),
                theirs
                    .encode_char_offsets((short, t.as_str()), true)
                    .unwrap(),
            );
            assert_eq!(a.ids, b.get_ids(), "{} pair {i}", dir.display());
            assert_eq!(a.type_ids, b.get_type_ids());
            assert_eq!(
                a.offsets,
                b.get_offsets(),
                "{} pair offsets {i}",
                dir.display()
            );
        }
    }
}

/// `--label` takes a candidate whole, commas and all, and adds to `--labels`; a
/// hypothesis template Python's `str.format` would refuse (two `{}`, a named field) is
/// refused before the model loads, and `{{`/`}}` are literal braces as in Python.
#[test]
fn zero_shot_labels_with_commas_and_python_templates() {
    let dir = committed("families").join("deberta-v3");
    let out = common::command_with(
        "zero-shot",
        &dir,
        &[
            "--label",
            "sports, outdoors",
            "--labels",
            "politics,tech",
            "--format",
            "jsonl",
        ],
        b"a fine film\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = jsonl(&out);
    let mut got: Vec<&str> = rows[0]["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["politics", "sports, outdoors", "tech"]);
    for bad in ["{} and {}", "{x} {}"] {
        let out = common::command_with(
            "zero-shot",
            &dir,
            &["--labels", "a,b", "--hypothesis-template", bad],
            b"text\n",
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains("--hypothesis-template"), "{bad}");
    }
    let braces = common::command_with(
        "zero-shot",
        &dir,
        &["--labels", "a,b", "--hypothesis-template", "{{x}} {}"],
        b"text\n",
    );
    assert!(braces.status.success(), "{}", stderr(&braces));
}
