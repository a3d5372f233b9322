//! The HTML attention view: a self-contained page rendered in headless Chromium with the
//! network blocked (no console errors, no requests, one line per drawn weight, numbers as
//! in the JSON dump), rollout against a reference from PyTorch's attentions, `view` from a
//! JSON dump, layer/head filters, atomic dump files, and the page's size for bert-base.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bert_cli::output::attention::{page_entry, rollout, PageEntry};
use common::*;
use serde_json::Value;

const TEXTS: [&str; 2] = [
    "the cat jumped",
    "I didn't really enjoy this movie. It was fantastic!",
];

fn dump(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec!["--dump-attention", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&TEXTS);
    let out = classify_with(&minilm_sst2(), &args, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn json_dump(path: &Path) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v.as_array().unwrap().clone()
}

/// The first Chromium-like browser on PATH.
fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(String::from)
}

/// Loads `page#selftest` headless with every network request refused; returns the page's
/// own report and the browser's stderr (console messages are logged there).
fn selftest(browser: &str, page: &Path) -> (Value, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}#selftest", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let start = dom
        .rfind("<pre id=\"selftest\">")
        .unwrap_or_else(|| panic!("no self-test report in the page:\n{dom:.2000}\n{stderr:.4000}"));
    let body = &dom[start + "<pre id=\"selftest\">".len()..];
    let body = &body[..body.find("</pre>").unwrap()];
    let json = body
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    (serde_json::from_str(&json).unwrap(), stderr)
}

/// Quantised as the page stores it.
fn stored(p: f64) -> f64 {
    (p.clamp(0.0, 1.0) * 255.0).round() / 255.0
}

#[test]
fn html_page_renders_offline_and_matches_the_json_dump() {
    let dir = tempfile::tempdir().unwrap();
    let page = dump(dir.path(), "attn.html", &[]);
    let json = json_dump(&dump(dir.path(), "attn.json", &[]));
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no element loads anything, and the policy forbids it anyway.
    for banned in ["<script src", "<link", "@import", "url(", "<img", "<iframe"] {
        assert!(!html.contains(banned), "the page has {banned}");
    }
    assert!(html.contains("Content-Security-Policy") && html.contains("default-src 'none'"));
    assert_eq!(html.matches("<script>BERT_CLI_DATA.push(").count(), 2);
    // A page is made to be shared: a local model is named by its folder, not its path.
    let model_dir = minilm_sst2();
    let parent = model_dir.parent().unwrap().to_str().unwrap();
    assert!(
        !html.contains(parent),
        "the page shows the local path {parent}"
    );

    let Some(browser) = chromium() else {
        say("SKIPPED: the page was not rendered: no chromium on PATH (.ci/run installs Debian's chromium)");
        return;
    };
    let (report, stderr) = selftest(&browser, &page);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert!(
        !stderr.contains("Uncaught") && !stderr.contains("Refused to"),
        "console errors:\n{stderr}"
    );
    assert_eq!(report["resources"], 0, "the page requested something");
    assert_eq!(report["entries"], 2);
    assert_eq!(
        report["canvases"],
        6 * 12,
        "one heat map per layer and head"
    );
    // One head drawn at first (all twelve at once were a tangle), its heat map labelled
    // with the tokens and a colour scale; a short text is not marked as cut.
    assert_eq!(report["initialHeads"], 1, "{report}");
    assert_eq!(report["heatmap"], true);
    assert!(report["heatmapLabels"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["legend"], 1);
    assert_eq!(report["truncated"], false);
    assert_eq!(report["cutMarked"], 0);

    // Lines of head 0 in every layer: one per weight the page draws (>= 0.05 as stored).
    let att = &json[0]["attention"];
    let mut counts = Vec::new();
    for (li, c) in report["counts"].as_array().unwrap().iter().enumerate() {
        let want = att[li][0]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .filter(|&p| stored(p) >= 0.05)
            .count();
        assert_eq!(c["select"], li, "the layer selector follows");
        assert_eq!(c["lines"], want, "layer {li}, head 0");
        counts.push(want);
    }
    assert!(
        counts.iter().any(|&c| c != counts[0]),
        "changing the layer changes the lines: {counts:?}"
    );
    // Numbers: the page's decoded weights equal the JSON dump's to 1/255.
    for cell in report["cells"].as_array().unwrap() {
        let c: Vec<f64> = cell
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (l, h, q, k) = (c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize);
        let want = att[l][h][q][k].as_f64().unwrap();
        assert!(
            (c[4] - want).abs() <= 0.5 / 255.0 + 1e-6,
            "{cell} vs {want}"
        );
    }
    assert_eq!(
        report["rolloutRows"],
        json[0]["tokens"].as_array().unwrap().len()
    );
    let page_rollout: Vec<f32> = floats(&report["rollout"]);
    let reference = reference("rollout-minilm-sst2");
    let want = floats(&reference["cases"][0]["rollout"][5]);
    assert!(
        max_diff(&page_rollout, &want) < 1e-4,
        "page rollout {page_rollout:?} vs PyTorch's {want:?}"
    );
}

#[test]
fn rollout_equals_the_reference_from_pytorch_attentions() {
    let attention = reference("minilm-sst2")["attention"].clone();
    let rollouts = reference("rollout-minilm-sst2");
    let mut worst = 0f32;
    for (case, want) in attention
        .as_array()
        .unwrap()
        .iter()
        .zip(rollouts["cases"].as_array().unwrap())
    {
        assert_eq!(case["text"], want["text"]);
        let att: Vec<Vec<Vec<Vec<f32>>>> =
            serde_json::from_value(case["attention"].clone()).unwrap();
        let got = rollout(&att);
        for (g, w) in got.iter().zip(want["rollout"].as_array().unwrap()) {
            worst = worst.max(max_diff(g, &floats(w)));
        }
    }
    say(&format!(
        "rollout vs numpy on PyTorch's attentions: max |diff| {worst:.2e}"
    ));
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn view_turns_a_json_dump_into_the_page_and_filters_keep_less() {
    let dir = tempfile::tempdir().unwrap();
    let json = dump(dir.path(), "attn.json", &[]);
    let out = bert_cli()
        .args(["view", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.path().join("attn.html")).unwrap();
    assert_eq!(page.matches("<script>BERT_CLI_DATA.push(").count(), 2);
    // The same page as a direct HTML dump: the data are the same bytes.
    let direct = std::fs::read_to_string(dump(dir.path(), "direct.html", &[])).unwrap();
    let data = |p: &str| -> Vec<String> {
        p.lines()
            .filter(|l| l.starts_with("<script>BERT_CLI_DATA.push("))
            .map(String::from)
            .collect()
    };
    let (a, b) = (data(&page), data(&direct));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let (x, y): (Value, Value) = (
            serde_json::from_str(
                &x["<script>BERT_CLI_DATA.push(".len()..x.len() - ");</script>".len()],
            )
            .unwrap(),
            serde_json::from_str(
                &y["<script>BERT_CLI_DATA.push(".len()..y.len() - ");</script>".len()],
            )
            .unwrap(),
        );
        assert_eq!(x["attention"], y["attention"]);
        assert_eq!(x["tokens"], y["tokens"]);
    }

    // Filters: two layers, three heads, said in the entry.
    let kept = json_dump(&dump(
        dir.path(),
        "kept.json",
        &["--attention-layers", "0,5", "--attention-heads", "1,2,11"],
    ));
    let full = json_dump(&json);
    let e = &kept[0];
    assert_eq!(
        (e["num_layers"].as_u64(), e["num_heads"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(e["layers"], serde_json::json!([0, 5]));
    assert_eq!(e["attention"][1][2], full[0]["attention"][5][11]);
    let out = classify_with(
        &minilm_sst2(),
        &[
            "--dump-attention",
            dir.path().join("x.json").to_str().unwrap(),
            "--attention-layers",
            "6",
            "x",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("numbered 0 to 5"));
}

#[test]
fn view_refuses_a_damaged_dump_naming_what_is_wrong() {
    // A short row panicked in the rollout; the others made a page of nonsense.
    let dir = tempfile::tempdir().unwrap();
    let good = json_dump(&dump(dir.path(), "attn.json", &[]));
    type Damage = fn(&mut Value);
    let cases: [(&str, Damage, &str); 5] = [
        (
            "short row",
            |e| e["attention"][0][0][0] = serde_json::json!([0.5]),
            "attention is not",
        ),
        (
            "missing layers",
            |e| e["attention"].as_array_mut().unwrap().truncate(2),
            "has 2 layers but the entry says 6 (num_layers)",
        ),
        (
            "negative",
            |e| e["attention"][1][2][0][0] = serde_json::json!(-5.0),
            "holds -5",
        ),
        (
            "huge",
            |e| e["attention"][1][2][0][0] = serde_json::json!(1e30),
            "not a probability",
        ),
        (
            "scores",
            |e| {
                e["prediction"]["probs"].as_array_mut().unwrap().pop();
            },
            "2 labels but 1 scores",
        ),
    ];
    for (what, damage, want) in cases {
        let mut entries = good.clone();
        damage(&mut entries[0]);
        let json = dir.path().join(format!("{}.json", what.replace(' ', "-")));
        std::fs::write(&json, serde_json::to_vec(&entries).unwrap()).unwrap();
        let page = dir.path().join("page.html");
        let out = bert_cli()
            .args(["view", json.to_str().unwrap(), "-o", page.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("record 1") && stderr.contains(want),
            "{what}: {stderr}"
        );
        assert!(!page.exists(), "{what}: a page was left behind");
    }
    // A page handed to view is named as a page, not as "also the input".
    let page = dir.path().join("attn.html");
    std::fs::write(&page, "<!doctype html>").unwrap();
    let out = bert_cli()
        .args(["view", page.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is already a page") && !stderr.contains("also the input"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&page).unwrap(), b"<!doctype html>");
}

#[test]
fn dumps_go_through_links_into_pipes_and_never_over_the_input() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    // A link: the file it names gets the dump, and the link stays (it was replaced by
    // a plain file).
    std::fs::write(at("real.json"), "old").unwrap();
    std::os::unix::fs::symlink("real.json", at("link.json")).unwrap();
    dump(dir.path(), "link.json", &[]);
    assert!(std::fs::symlink_metadata(at("link.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(json_dump(&at("real.json")).len(), 2);

    // A FIFO: its reader gets the dump, and it stays a FIFO (it was replaced, and the
    // reader got nothing).
    let fifo = at("pipe.json");
    match Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn({
                let fifo = fifo.clone();
                move || tx.send(std::fs::read_to_string(fifo).unwrap())
            });
            // Neither side may wait forever if the other went wrong.
            let mut child = bert_cli()
                .args(["classify", "--model"])
                .arg(minilm_sst2())
                .arg("--dump-attention")
                .arg(&fifo)
                .args(TEXTS)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let started = std::time::Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > std::time::Duration::from_secs(60) {
                    let _ = child.kill();
                    panic!("writing the dump into a FIFO did not finish");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            assert_eq!(status.code(), Some(0));
            let text = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the FIFO's reader got nothing");
            let got: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got.as_array().unwrap().len(), 2);
            assert!(std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo());
        }
        _ => say("mkfifo is not available: the FIFO case was not run"),
    }

    // /dev/stdout with standard output redirected to a file: the dump goes down the same
    // stream after the results (reopened by name, the file was replaced and the results
    // lost).
    let out_path = at("out.txt");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let status = bert_cli()
        .args(["classify", "--model"])
        .arg(minilm_sst2())
        .args([
            "-f",
            "jsonl",
            "--dump-attention",
            "/dev/stdout",
            "a fine film",
        ])
        .stdout(out_file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&out_path).unwrap();
    let (result, rest) = text.split_once('\n').unwrap();
    let result: Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["text"], "a fine film");
    let dumped: Value = serde_json::from_str(rest).unwrap();
    assert_eq!(dumped[0]["text"], "a fine film");

    // The input itself, for a dump and for a page: refused before anything is written.
    let input = at("in.txt");
    std::fs::write(&input, "a fine film\n").unwrap();
    let out = classify_with(
        &minilm_sst2(),
        &[
            "-i",
            input.to_str().unwrap(),
            "--dump-attention",
            input.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is also the input"));
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "a fine film\n");
    let out = bert_cli()
        .args(["classify", "--model"])
        .arg(minilm_sst2())
        .args(["--dump-attention", input.to_str().unwrap()])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "< FILE is the input too");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is also the input"));
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "a fine film\n");
    let json = at("real.json");
    let before = std::fs::read(&json).unwrap();
    let out = bert_cli()
        .args([
            "view",
            json.to_str().unwrap(),
            "-o",
            at("link.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is also the input"));
    assert_eq!(std::fs::read(&json).unwrap(), before);
}

#[test]
fn a_failed_run_leaves_no_dump_and_an_existing_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attn.json");
    std::fs::write(&path, b"keep me").unwrap();
    // The model fails to load after the dump was opened.
    let out = bert_cli()
        .args(["classify", "--model", "./no-such-model", "--dump-attention"])
        .arg(&path)
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    // A good run replaces it whole.
    dump(dir.path(), "attn.json", &[]);
    assert_eq!(json_dump(&path).len(), 2);
}

#[test]
fn a_128_token_bert_base_page_stays_under_5_mb() {
    // bert-base's shape: 12 layers x 12 heads; softmax-like rows over 128 tokens.
    let (layers, heads, n) = (12, 12, 128);
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    };
    let attention: Vec<Vec<Vec<Vec<f32>>>> = (0..layers)
        .map(|_| {
            (0..heads)
                .map(|_| {
                    (0..n)
                        .map(|_| {
                            let row: Vec<f32> = (0..n).map(|_| next().powi(8)).collect();
                            let s: f32 = row.iter().sum();
                            row.into_iter().map(|x| x / s).collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let tokens: Vec<String> = (0..n).map(|i| format!("tok{i}")).collect();
    let labels = vec!["NEGATIVE".to_string(), "POSITIVE".to_string()];
    let all: Vec<usize> = (0..layers).collect();
    let hs: Vec<usize> = (0..heads).collect();
    let page = page_entry(&PageEntry {
        record: 1,
        id: None,
        text: "synthetic",
        text_pair: None,
        sentence_b_start: None,
        part: None,
        tokens: &tokens,
        truncated: false,
        label: "POSITIVE",
        labels: &labels,
        probs: &[0.25, 0.75],
        layers: &all,
        heads: &hs,
        attention: attention.iter().map(|l| l.iter().collect()).collect(),
        rollout: Some(rollout(&attention)),
    })
    .unwrap();
    let json = serde_json::to_vec(&attention).unwrap();
    say(&format!(
        "128-token bert-base-shaped input: page entry {:.2} MB, JSON attention {:.1} MB",
        page.len() as f64 / 1e6,
        json.len() as f64 / 1e6
    ));
    assert!(page.len() < 5_000_000, "{} bytes", page.len());
    assert!(
        json.len() > 5 * page.len(),
        "the page is much smaller than the JSON"
    );
}

#[test]
fn a_dump_about_to_pass_100_mb_is_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    // ~420 tokens x 6 layers x 12 heads: about 130 MB of JSON.
    let long = "the movie was long and the actors were good ".repeat(42);
    let out = classify_with(
        &minilm_sst2(),
        &[
            "--dump-attention",
            path.to_str().unwrap(),
            "-f",
            "jsonl",
            &long,
            "short",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("will pass 100 MB").count(), 1, "{stderr}");
    assert!(stderr.contains("--attention-layers"), "{stderr}");
    let size = std::fs::metadata(&path).unwrap().len();
    say(&format!(
        "dump of a {}-token input: {:.0} MB",
        jsonl_tokens(&out),
        size as f64 / 1e6
    ));
    assert!(size > 100_000_000);
}

fn jsonl_tokens(out: &std::process::Output) -> u64 {
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    first["tokens"].as_u64().unwrap()
}

#[test]
fn a_pair_page_marks_the_second_text() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("pair.html");
    let out = classify_with(
        &minilm_sst2(),
        &[
            "--dump-attention",
            page.to_str().unwrap(),
            "--text-pair",
            "the second",
            "the first one",
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("\"sentence_b_start\":5"), "the data marks it");
    let Some(browser) = chromium() else {
        say("SKIPPED: the pair page was not rendered: no chromium on PATH (.ci/run installs Debian's chromium)");
        return;
    };
    let (report, _) = selftest(&browser, &page);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    // [CLS] the first one [SEP] | the second [SEP]: 3 tokens from 5 on, drawn on both sides.
    assert_eq!(report["second"], 6, "{report}");
    assert_eq!(report["pairText"], 1, "{report}");
}

/// A text longer than the model reads: the page marks where it stopped, and 512 tokens
/// fit in a head view of about 1,100 px (at 18 px a row it was 9,000 px tall).
#[test]
fn a_long_input_is_drawn_to_fit_and_marked_where_the_model_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("long.html");
    let long = "a gorgeous , witty movie that stays with you . ".repeat(120);
    let out = classify_with(
        &minilm_sst2(),
        &[
            "--dump-attention",
            page.to_str().unwrap(),
            "--attention-layers",
            "0",
            &long,
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("\"truncated\":true"),
        "the page data says it was cut"
    );
    let Some(browser) = chromium() else {
        say("SKIPPED: the page was not rendered: no chromium on PATH (.ci/run installs Debian's chromium)");
        return;
    };
    let (report, _) = selftest(&browser, &page);
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["truncated"], true);
    assert_eq!(report["cutMarked"], 1, "{report}");
    let height = report["svgHeight"].as_f64().unwrap();
    assert!(height <= 1200.0, "head view {height} px tall");
}
