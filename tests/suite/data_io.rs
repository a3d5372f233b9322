//! Real data in and out, end to end through the binary: lines, NUL-separated records,
//! JSONL and CSV/TSV inputs; JSONL objects and CSV/TSV rows carried through; ids; top-k,
//! thresholds and score functions against PyTorch's logits; bad records; the progress
//! bar on a pseudo-terminal; completions and the man page.

use crate::common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{json, Value};

fn classify(args: &[&str], stdin: &[u8]) -> Output {
    classify_with(&minilm_sst2(), args, stdin)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn jsonl(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// CSV rows (header first) as parsed by the csv crate.
fn csv_rows(text: &str, sep: u8) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(sep)
        .quoting(sep == b',')
        .flexible(true)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect()
}

/// Dev sentences with PyTorch's labels and logits.
fn dev(n: usize) -> Vec<(String, String, Vec<f32>)> {
    reference("minilm-sst2")["cases"].as_array().unwrap()[..n]
        .iter()
        .map(|c| {
            let label = ["NEGATIVE", "POSITIVE"][c["label"].as_u64().unwrap() as usize];
            (
                c["text"].as_str().unwrap().to_string(),
                label.to_string(),
                floats(&c["logits"]),
            )
        })
        .collect()
}

/// The prediction of a JSONL output record: carried through under "prediction", or compact.
fn pred(r: &Value) -> &Value {
    r.get("prediction").unwrap_or(r)
}

/// CSV-quotes a field.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[test]
fn csv_quoting_is_read_exactly_and_labels_match_pytorch() {
    let cases = dev(12);
    // A newline in place of a space tokenizes the same for BERT, so PyTorch's label holds.
    let texts: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (t, _, _))| {
            if i == 3 {
                t.replacen(' ', "\n", 2)
            } else {
                t.clone()
            }
        })
        .collect();
    let mut csv = String::from("id,review,stars\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("r{i},{},{}\n", q(t), i % 5));
    }
    csv.push_str("q,\"she said \"\"no\"\", twice\",1\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.csv");
    std::fs::write(&path, &csv).unwrap();
    let p = path.to_str().unwrap();

    // JSONL: each row as an object of all its columns (not only the id), the text as it
    // was read, with the prediction under its key.
    let out = classify(
        &[
            "-i",
            p,
            "--column",
            "review",
            "--id-column",
            "id",
            "-f",
            "jsonl",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recs = jsonl(&out);
    assert_eq!(recs.len(), texts.len() + 1);
    for (i, (r, t)) in recs.iter().zip(&texts).enumerate() {
        assert_eq!(r["id"], format!("r{i}"));
        assert_eq!(r["review"], t.as_str());
        assert_eq!(r["stars"], (i % 5).to_string());
        assert_eq!(r["prediction"]["label"], cases[i].1.as_str(), "record {i}");
    }
    assert_eq!(recs[12]["review"], "she said \"no\", twice");

    // CSV out: every input row back as it was, header included, with label and score.
    let out = classify(&["-i", p, "--column", "2", "-f", "csv"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = csv_rows(&stdout(&out), b',');
    let input = csv_rows(&csv, b',');
    assert_eq!(rows.len(), input.len());
    assert_eq!(
        rows[0],
        ["id", "review", "stars", "label", "score", "error"]
    );
    for (i, (got, want)) in rows.iter().zip(&input).enumerate().skip(1) {
        assert_eq!(got[..3], want[..], "row {i}");
        if i <= cases.len() {
            assert_eq!(got[3], cases[i - 1].1, "row {i}");
        }
        assert!(got[5].is_empty());
    }

    // No header: columns by number, the first row is data.
    let body = csv.split_once('\n').unwrap().1;
    let out = classify(
        &[
            "--input-format",
            "csv",
            "--no-header",
            "--column",
            "2",
            "-f",
            "tsv",
        ],
        body.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = csv_rows(&stdout(&out), b'\t');
    assert_eq!(rows[0][..4], ["1", "2", "3", "label"]);
    assert_eq!(rows.len(), texts.len() + 2);
    assert_eq!(
        rows[4][1],
        texts[3].replace('\n', "\\n"),
        "TSV escapes the newline"
    );
}

#[test]
fn jsonl_objects_come_back_whole_with_the_prediction_added() {
    let cases = dev(6);
    let mut lines = Vec::new();
    for (i, (t, _, _)) in cases.iter().enumerate() {
        // Nested values, exotic numbers, unicode escapes: all must come back unchanged.
        lines.push(format!(
            r#"{{"id": {i}, "body": {}, "meta": {{"tags": ["a", {{"b": null}}], "n": 1.50, "big": 12345678901234567890123, "s": "caf\u00e9 \ud83d\ude00"}}}}"#,
            serde_json::to_string(t).unwrap()
        ));
    }
    lines.push(r#"{"id": "multi", "body": "line one\nline two\u0021"}"#.into());
    let input = lines.join("\n") + "\n";
    let out = classify(
        &["--input-format", "jsonl", "--field", "body", "-f", "jsonl"],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), lines.len(), "one record per object");
    for (i, (line, want)) in got.iter().zip(&lines).enumerate() {
        let mut obj: Value = serde_json::from_str(line).unwrap();
        let prediction = obj.as_object_mut().unwrap().remove("prediction").unwrap();
        let input: Value = serde_json::from_str(want).unwrap();
        assert_eq!(obj, input, "record {i} carried through");
        if i < cases.len() {
            assert_eq!(prediction["label"], cases[i].1.as_str());
            // Byte for byte: the number keeps its digits, the escapes their spelling.
            assert!(line.contains("12345678901234567890123") && line.contains("1.50"));
            assert!(line.contains(r"caf\u00e9 \ud83d\ude00"), "{line}");
        }
        assert_eq!(prediction["truncated"], false);
    }

    // A different key, a nested field by JSON pointer, and the id into compact TSV.
    let nested = r#"{"doc": {"title": "a gorgeous, witty, seductive movie."}, "key": 7}"#;
    let out = classify(
        &[
            "--input-format",
            "jsonl",
            "--field",
            "/doc/title",
            "--output-key",
            "pred",
            "-f",
            "jsonl",
        ],
        nested.as_bytes(),
    );
    let recs = jsonl(&out);
    assert_eq!(recs[0]["pred"]["label"], "POSITIVE");
    assert_eq!(recs[0]["key"], 7);
    let out = classify(
        &[
            "--input-format",
            "jsonl",
            "--field",
            "body",
            "--id-field",
            "id",
            "-f",
            "tsv",
        ],
        input.as_bytes(),
    );
    let rows = csv_rows(&stdout(&out), b'\t');
    assert_eq!(rows[0], ["record", "id", "label", "score", "text"]);
    assert_eq!(rows[1][1], "0");
    assert_eq!(rows[7][1], "multi");
    assert_eq!(rows[7][4], "line one\\nline two!");
}

#[test]
fn nul_separated_records_may_hold_newlines() {
    let out = classify(
        &["-0", "-f", "jsonl"],
        b"a gorgeous,\nwitty movie\0utterly boring\0",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["text"], "a gorgeous,\nwitty movie");
    assert_eq!(recs[1]["record"], 2);
}

/// Each input format with one bad record at index 2, written for `texts`.
fn inputs(texts: &[String]) -> Vec<(&'static str, Vec<u8>)> {
    let mut lines = Vec::new();
    let mut jsonl = Vec::new();
    let mut csv = b"n,text\n".to_vec();
    let mut tsv = b"n\ttext\n".to_vec();
    for (i, t) in texts.iter().enumerate() {
        if i == 2 {
            lines.extend_from_slice(b"bad \xff byte\n");
            jsonl.extend_from_slice(b"{\"n\": 2, \"text\": 5}\n");
            csv.extend_from_slice(b"2,too,many\n");
            tsv.extend_from_slice(b"2\n");
        }
        let k = if i >= 2 { i + 1 } else { i };
        lines.extend_from_slice(format!("{t}\n").as_bytes());
        jsonl.extend_from_slice(format!("{}\n", json!({"n": k, "text": t})).as_bytes());
        csv.extend_from_slice(format!("{k},{}\n", q(t)).as_bytes());
        tsv.extend_from_slice(format!("{k}\t{t}\n").as_bytes());
    }
    vec![
        ("lines", lines),
        ("jsonl", jsonl),
        ("csv", csv),
        ("tsv", tsv),
    ]
}

#[test]
fn every_format_pair_keeps_count_and_order_and_bad_records_get_an_error_in_place() {
    let cases = dev(20);
    let texts: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    // Expected labels by record, with the bad record (index 2) as None.
    let mut want: Vec<Option<&str>> = cases.iter().map(|c| Some(c.1.as_str())).collect();
    want.insert(2, None);
    for (in_format, data) in inputs(&texts) {
        for out_format in ["human", "jsonl", "csv", "tsv"] {
            let ctx = format!("{in_format} -> {out_format}");
            let out = classify(
                &["--input-format", in_format, "-f", out_format, "-b", "4"],
                &data,
            );
            assert_eq!(out.status.code(), Some(2), "{ctx}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("stdin line 3:") || err.contains("stdin record 3 (line 4):"),
                "{ctx}: {err}"
            );
            let text = stdout(&out);
            let labels: Vec<String> = match out_format {
                "human" => text
                    .lines()
                    .map(|l| l.split_whitespace().next().unwrap().to_string())
                    .collect(),
                "jsonl" => jsonl(&out)
                    .iter()
                    .map(|r| pred(r)["label"].as_str().unwrap_or("ERROR").to_string())
                    .collect(),
                _ => {
                    let sep = if out_format == "csv" { b',' } else { b'\t' };
                    let rows = csv_rows(&text, sep);
                    let col = rows[0].iter().position(|c| c == "label").unwrap();
                    rows[1..].iter().map(|r| r[col].clone()).collect()
                }
            };
            assert_eq!(
                labels.len(),
                want.len(),
                "{ctx}: one record out per record in"
            );
            for (i, (got, want)) in labels.iter().zip(&want).enumerate() {
                assert_eq!(got, want.unwrap_or("ERROR"), "{ctx}: record {}", i + 1);
            }
            // Carried-through records say which input they were.
            if in_format == "jsonl" && out_format == "jsonl" {
                let recs = jsonl(&out);
                for (i, r) in recs.iter().enumerate() {
                    assert_eq!(r["n"], i, "{ctx}");
                }
                assert!(recs[2]["prediction"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("field \"text\" is a number, not a string"));
                assert_eq!(recs[2]["prediction"]["record"], 3);
            }
        }
    }
}

#[test]
fn bad_records_are_named_and_lose_nothing_else() {
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "jsonl",
            b"{\"text\": \"great\"}\n{\"body\": \"x\"}\n{\"text\": \"awful\"}\n",
            "has no field \"text\" (fields: body)",
        ),
        (
            "jsonl",
            b"{\"text\": \"great\"}\n{not json\n{\"text\": \"awful\"}\n",
            "not valid JSON",
        ),
        (
            "csv",
            b"text,n\ngreat,1\n\"unclosed,2\nawful,3\n",
            "never closed",
        ),
        (
            "tsv",
            b"text\tn\ngreat\t1\nshort\nawful\t3\n",
            "1 fields, but the header has 2",
        ),
    ];
    for (format, data, why) in cases {
        let out = classify(&["--input-format", format, "-f", "jsonl"], data);
        assert_eq!(out.status.code(), Some(2), "{format}");
        let recs = jsonl(&out);
        let err = stderr(&out);
        assert!(err.contains(why), "{format}: {err}");
        assert_eq!(pred(&recs[0])["label"], "POSITIVE", "{format}: {recs:?}");
        if format == "csv" {
            // The unclosed quote swallowed the rest of the file; that is said, not hidden.
            assert_eq!(recs.len(), 2);
            assert!(pred(&recs[1])["error"]
                .as_str()
                .unwrap()
                .contains("lines 3 to 4"));
        } else {
            assert_eq!(recs.len(), 3);
            assert!(pred(&recs[1])["error"].as_str().unwrap().contains(why));
            assert_eq!(pred(&recs[2])["label"], "NEGATIVE");
        }
    }
    // A column that does not exist fails before any work, naming the columns there are.
    let out = classify(
        &["--input-format", "csv", "--column", "review"],
        b"id,text\n1,x\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no such column (columns: id, text)"),
        "{}",
        stderr(&out)
    );
    // Record flags on TEXT arguments are refused rather than ignored.
    let out = classify(&["--field", "body", "great"], b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn top_k_threshold_and_score_functions_follow_pytorch_logits() {
    let cases = dev(8);
    let input: String = cases.iter().map(|c| format!("{}\n", c.0)).collect();
    let softmax = |l: &[f32]| -> Vec<f32> {
        let m = l.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f32> = l.iter().map(|x| (x - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    let out = classify(&["-f", "jsonl", "--top-k", "all"], input.as_bytes());
    for (r, (_, _, logits)) in jsonl(&out).iter().zip(&cases) {
        let p = softmax(logits);
        let top = r["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        let best = if p[1] > p[0] { 1 } else { 0 };
        assert_eq!(top[0]["label"], ["NEGATIVE", "POSITIVE"][best]);
        assert!((top[0]["score"].as_f64().unwrap() as f32 - p[best]).abs() < 1e-4);
        assert!((top[1]["score"].as_f64().unwrap() as f32 - p[1 - best]).abs() < 1e-4);
    }
    for (function, f) in [
        (
            "none",
            Box::new(|l: &[f32]| l.to_vec()) as Box<dyn Fn(&[f32]) -> Vec<f32>>,
        ),
        (
            "sigmoid",
            Box::new(|l: &[f32]| l.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()),
        ),
    ] {
        let out = classify(
            &[
                "-f",
                "jsonl",
                "--all-scores",
                "--function-to-apply",
                function,
            ],
            input.as_bytes(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        for (r, (_, label, logits)) in jsonl(&out).iter().zip(&cases) {
            let want = f(logits);
            let got = [
                r["scores"]["NEGATIVE"].as_f64().unwrap() as f32,
                r["scores"]["POSITIVE"].as_f64().unwrap() as f32,
            ];
            assert!(
                max_diff(&got, &want) < 1e-4,
                "{function}: {got:?} vs {want:?}"
            );
            assert_eq!(r["label"], label.as_str());
        }
    }

    // A multi-label model lists every label above 0.5 by default, or above --threshold.
    let roberta = family_dir("roberta");
    let reference = reference("family-roberta");
    let case = &reference["cases"][0];
    let sigmoid: Vec<f32> = floats(&case["logits"])
        .iter()
        .map(|x| 1.0 / (1.0 + (-x).exp()))
        .collect();
    let names = ["admiration", "anger", "joy", "sadness", "neutral"];
    let text = case["text"].as_str().unwrap();
    for (args, t) in [(&[][..], 0.5f32), (&["--threshold", "0.3"][..], 0.3)] {
        let out = classify_with(
            &roberta,
            &[&["-f", "jsonl"][..], args, &[text]].concat(),
            b"",
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let r = &jsonl(&out)[0];
        let mut want: Vec<(usize, f32)> = sigmoid
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, s)| s > t)
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        let got = r["labels"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "threshold {t}: {r}");
        for (g, (i, s)) in got.iter().zip(&want) {
            assert_eq!(g["label"], names[*i]);
            assert!((g["score"].as_f64().unwrap() as f32 - s).abs() < 1e-4);
        }
    }
}

#[test]
fn truncated_inputs_are_marked_and_counted_once() {
    let long = "a very long and rambling review ".repeat(40);
    let input = format!("short one\n{long}\n{long}\n");
    let out = classify(&["-f", "jsonl", "--max-length", "32"], input.as_bytes());
    assert_eq!(out.status.code(), Some(0));
    let recs = jsonl(&out);
    assert_eq!(recs[0]["truncated"], false);
    assert_eq!(
        (recs[1]["truncated"].as_bool(), recs[1]["tokens"].as_u64()),
        (Some(true), Some(32))
    );
    let err = stderr(&out);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(
        err.contains("2 of 3 inputs were longer than 32 tokens"),
        "{err}"
    );
}

#[test]
fn progress_bar_draws_on_a_terminal_and_never_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.txt");
    let lines: String = (0..1500)
        .map(|i| format!("review number {i} was fine\n"))
        .collect();
    std::fs::write(&path, lines).unwrap();
    let args = |c: &mut Command| {
        c.arg("classify")
            .arg("--model")
            .arg(minilm_sst2())
            .args(["--input", path.to_str().unwrap(), "-b", "8"])
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
    };

    // Stderr a pipe: not a byte of bar.
    let mut piped = bert_cli();
    args(&mut piped);
    let out = piped.stderr(Stdio::piped()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1500);

    // Stderr a pseudo-terminal: the bar appears, with records and an ETA.
    let (mut master, slave) = pty();
    let mut c = bert_cli();
    args(&mut c);
    c.stderr(Stdio::from(slave));
    let child = c.spawn().unwrap();
    drop(c);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Reading the master ends with EIO once the child's side is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().count(),
        1500,
        "results stay whole on stdout"
    );
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(
        seen.contains("records") && seen.contains("ETA"),
        "no bar on the terminal: {seen:?}"
    );
}

/// A pseudo-terminal of 100 columns: (master, slave).
fn pty() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors, which are owned from here on.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

#[test]
fn completions_and_man_page_are_generated_from_the_flags() {
    let out = bert_cli().args(["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(script.contains("--input-format") && script.contains("--top-k"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bert-cli.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Completion as bash runs it: the words typed so far, the function the script
    // registers, the candidates it offers. Subcommands, then a subcommand's flags (a
    // hyphenated one too), then a flag's values.
    for (words, want) in [
        ("bert-cli cl", "classify"),
        ("bert-cli classify --for", "--format"),
        ("bert-cli zero-shot --hyp", "--hypothesis-template"),
        ("bert-cli classify --format j", "jsonl"),
        ("bert-cli classify --device cu", "cuda"),
    ] {
        let words: Vec<&str> = words.split(' ').collect();
        let line = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _bert__cli bert-cli {} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display(),
            words.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash").arg("-c").arg(&line).output().unwrap();
        let offered = stdout(&out);
        assert!(
            offered.lines().any(|w| w == want),
            "completing {words:?} offers {offered:?}, not {want}; {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = bert_cli().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(stdout(&out).contains("classify"), "{shell}");
    }

    let out = bert_cli().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = stdout(&out);
    for want in [
        "BERT-CLI CLASSIFY",
        "\\-\\-field",
        "\\-\\-threshold",
        "[alias: \\-\\-column]",
        "BERT-CLI COMPLETIONS",
        ".SH EXAMPLES",
        ".SH ENVIRONMENT",
        "BERT_CLI_MODEL",
    ] {
        assert!(page.contains(want), "man page lacks {want}");
    }
    let man = dir.path().join("bert-cli.1");
    std::fs::write(&man, &page).unwrap();
    match Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&man)
        .output()
    {
        Ok(r) => {
            assert!(r.status.success());
            assert!(
                r.stderr.is_empty(),
                "groff warns: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Err(e) => say(&format!(
            "groff not installed ({e}); the man page was not rendered"
        )),
    }
}

#[test]
fn flags_the_input_would_ignore_are_refused() {
    // Each of these was ignored: the whole line classified as the text, or the pair
    // left out, with exit 0.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("reviews.json");
    std::fs::write(
        &json,
        "{\"body\": \"an utterly terrible film\", \"id\": 1}\n",
    )
    .unwrap();
    let file = json.to_str().unwrap();
    for (args, want) in [
        (
            vec!["-i", file, "--field", "body"],
            "--field names a JSONL field",
        ),
        (
            vec!["-i", file, "--id-field", "id"],
            "--id-field names a JSONL field",
        ),
        (
            vec!["-i", file, "--no-header"],
            "--no-header is for CSV/TSV",
        ),
        (
            vec!["-i", file, "--input-format", "jsonl", "-0"],
            "--null-data",
        ),
        (
            vec!["-i", file, "--text-pair", "QQQ"],
            "--text-pair pairs the TEXT arguments",
        ),
    ] {
        let out = classify(&args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // Named as JSONL, the same file reads as it should.
    let out = classify(
        &[
            "-i",
            file,
            "--input-format",
            "jsonl",
            "--field",
            "body",
            "-f",
            "jsonl",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(pred(&jsonl(&out)[0])["label"], "NEGATIVE");
}

/// An input that already has both `label` and `prediction_label` columns gets the
/// result under names it lacks: no column name appears twice in the header.
#[test]
fn result_columns_never_repeat_an_input_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(
        &path,
        "text,label,prediction_label\na fine film,1,x\na dull film,0,y\n",
    )
    .unwrap();
    let out = classify(&["-i", path.to_str().unwrap(), "--format", "csv"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = csv_rows(&stdout(&out), b',');
    let header = &rows[0];
    let mut unique = header.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), header.len(), "{header:?}");
    assert!(
        header.contains(&"prediction_prediction_label".to_string()),
        "{header:?}"
    );
    // The input's own columns come back as they were.
    assert_eq!(&rows[1][..3], ["a fine film", "1", "x"]);
}

/// `--id-field` labels answers; a JSONL record without its id, or with a null one, is
/// classified all the same, its id empty, and gets the label the others would give it.
#[test]
fn records_without_their_id_are_still_classified() {
    let cases = dev(3);
    let input = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"id": 7, "text": cases[0].0}),
        serde_json::json!({"text": cases[1].0}),
        serde_json::json!({"id": null, "text": cases[2].0}),
    );
    let out = classify(
        &[
            "--input-format",
            "jsonl",
            "--id-field",
            "id",
            "--format",
            "jsonl",
        ],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 3);
    for (row, (_, label, _)) in rows.iter().zip(&cases) {
        assert!(pred(row).get("error").is_none(), "{row}");
        assert_eq!(pred(row)["label"].as_str().unwrap(), label, "{row}");
    }
    assert_eq!(rows[0]["id"], 7);
    assert!(rows[1].get("id").is_none_or(Value::is_null), "{}", rows[1]);
}

/// A CSV with a header and no rows: the message names the file (it was given), exit 1,
/// and no empty attention page is left behind.
#[test]
fn a_header_only_file_is_named_and_leaves_no_dump() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.csv");
    std::fs::write(&path, "text,stars\n").unwrap();
    let page = dir.path().join("attn.html");
    let out = classify(
        &[
            "-i",
            path.to_str().unwrap(),
            "--dump-attention",
            page.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("empty.csv holds no records") && !err.contains("--input FILE"),
        "{err}"
    );
    assert!(!page.exists(), "an empty dump was written");
}

/// A run killed with SIGKILL leaves its `.NAME.tmp-PID`; the next run writing NAME
/// removes it, and leaves alone the one of a process still alive.
#[test]
fn temporary_files_of_killed_runs_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("attn.json");
    let dead = dir.path().join(".attn.json.tmp-4194000");
    let alive = dir
        .path()
        .join(format!(".attn.json.tmp-{}", std::process::id()));
    std::fs::write(&dead, "half a dump").unwrap();
    std::fs::write(&alive, "still being written").unwrap();
    let out = classify(&["--dump-attention", dump.to_str().unwrap(), "a film"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dump.exists());
    assert!(!dead.exists(), "the dead run's file stayed");
    assert!(alive.exists(), "a live process's file was removed");
}

/// A ';'-separated file read as CSV was one column, "1;good film" classified whole and
/// silently: now it is refused with the flag to pass, and `--delimiter ';'` reads it.
#[test]
fn semicolon_separated_files_need_and_take_a_delimiter() {
    let cases = dev(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.csv");
    let mut text = String::from("id;text\n");
    for (i, (t, _, _)) in cases.iter().enumerate() {
        text.push_str(&format!("{i};{}\n", q(t)));
    }
    std::fs::write(&path, &text).unwrap();
    let p = path.to_str().unwrap();
    let out = classify(&["-i", p, "--format", "jsonl"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--delimiter \";\""),
        "{}",
        stderr(&out)
    );
    let out = classify(
        &[
            "-i",
            p,
            "--delimiter",
            ";",
            "--id-field",
            "id",
            "--format",
            "jsonl",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = jsonl(&out);
    assert_eq!(rows.len(), cases.len());
    for (row, (_, label, _)) in rows.iter().zip(&cases) {
        assert_eq!(pred(row)["label"].as_str().unwrap(), label, "{row}");
    }
}

/// A gzip-compressed input (`--input reviews.csv.gz`) is decompressed as it is read, its
/// format taken from the name under `.gz`: the same answers as the plain file.
#[test]
fn gzip_input_is_read_decompressed() {
    use std::io::Write;
    let cases = dev(3);
    let mut csv = String::from("id,text\n");
    for (i, (t, _, _)) in cases.iter().enumerate() {
        csv.push_str(&format!("{i},{}\n", q(t)));
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("reviews.csv");
    std::fs::write(&plain, &csv).unwrap();
    let gz = dir.path().join("reviews.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(csv.as_bytes()).unwrap();
    enc.finish().unwrap();
    let args =
        |p: &std::path::Path| classify(&["-i", p.to_str().unwrap(), "--format", "jsonl"], b"");
    let (a, b) = (args(&plain), args(&gz));
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(jsonl(&b).len(), cases.len());
}

/// JSON Lines in, JSONL out: every line has its result under the output key, whether
/// its input was an object (carried through), a JSON string, or a line that could not be
/// read; `jq .prediction` never meets a second shape.
#[test]
fn jsonl_results_have_one_shape_whatever_the_line_was() {
    let cases = dev(2);
    let input = format!(
        "{}\n{}\n{{not json\n",
        serde_json::json!({"text": cases[0].0}),
        serde_json::json!(cases[1].0),
    );
    let out = classify(
        &["--input-format", "jsonl", "-f", "jsonl"],
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(2));
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row["prediction"].is_object(), "{row}");
    }
    assert_eq!(rows[0]["prediction"]["label"], cases[0].1.as_str());
    assert_eq!(rows[1]["prediction"]["label"], cases[1].1.as_str());
    assert_eq!(rows[1]["record"], 2);
    assert!(rows[2]["prediction"]["error"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(rows[2]["record"], 3);
}
