//! The built binary end to end: arguments, stdin streaming, formats, exit codes, errors,
//! closed pipes and the attention dump.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `classify` on the fixture with `args`, feeding `stdin`.
fn classify(args: &[&str], stdin: &[u8]) -> Output {
    classify_with(&minilm_sst2(), args, stdin)
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn jsonl(out: &Output) -> Vec<Value> {
    stdout_lines(out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Dev sentences and the labels PyTorch gave them.
fn dev_cases(n: usize) -> Vec<(String, String)> {
    let r = reference("minilm-sst2");
    r["cases"].as_array().unwrap()[..n]
        .iter()
        .map(|c| {
            let label = ["NEGATIVE", "POSITIVE"][c["label"].as_u64().unwrap() as usize];
            (c["text"].as_str().unwrap().to_string(), label.to_string())
        })
        .collect()
}

#[test]
fn arguments_are_classified_in_order_with_pytorch_labels() {
    let cases = dev_cases(5);
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    let out = classify(&texts, b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 5);
    for (line, (text, label)) in lines.iter().zip(&cases) {
        assert!(
            line.starts_with(label.as_str()),
            "{line:?} should start with {label}"
        );
        assert!(
            line.ends_with(text.as_str()),
            "{line:?} should end with the text"
        );
    }
}

#[test]
fn stdin_jsonl_gives_one_record_per_line_in_order() {
    let cases = dev_cases(70);
    let mut input = String::new();
    for (t, _) in &cases {
        input.push_str(t);
        input.push('\n');
    }
    input.push_str("\n   \r\nlast line without newline");
    let out = classify(
        &["--format", "jsonl", "--all-scores", "--batch-size", "8"],
        input.as_bytes(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 73);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["record"], i + 1);
        assert_eq!(r["truncated"], false);
        assert!(r["tokens"].as_u64().unwrap() >= 2);
        let scores = r["scores"].as_object().unwrap();
        let sum: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert_eq!(r["score"], scores[r["label"].as_str().unwrap()]);
        assert_eq!(r["logits"].as_array().unwrap().len(), 2);
    }
    for (r, (text, label)) in recs.iter().zip(&cases) {
        assert_eq!(r["text"], text.as_str());
        assert_eq!(r["label"], label.as_str());
    }
    assert_eq!(recs[70]["text"], "");
    assert_eq!(recs[71]["text"], "   ", "\\r\\n endings are stripped");
    assert_eq!(recs[72]["text"], "last line without newline");
}

#[test]
fn tsv_has_a_header_fixed_columns_and_escapes_text() {
    let out = classify(
        &["--format", "tsv", "--all-scores"],
        b"a\tgreat film\nawful\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        "record\tlabel\tscore\tscore_NEGATIVE\tscore_POSITIVE\ttext"
    );
    let cols: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(
        cols.len(),
        6,
        "record, label, score, 2 scores, text: {cols:?}"
    );
    assert_eq!(cols[0], "1");
    assert_eq!(cols[5], "a\\tgreat film");
    assert_eq!(lines[2].split('\t').next(), Some("2"));
}

#[test]
fn bad_utf8_line_is_reported_and_the_rest_survive() {
    let out = classify(
        &["--format", "jsonl"],
        b"good movie\nbad \xff\xfe bytes\nterrible movie\n",
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a failed input makes the exit status 2"
    );
    let recs = jsonl(&out);
    assert_eq!(recs.len(), 3);
    assert!(recs[0]["label"].is_string() && recs[2]["label"].is_string());
    let err = recs[1]["error"].as_str().unwrap();
    assert!(
        err.contains("stdin line 2") && err.contains("UTF-8"),
        "{err}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stdin line 2"), "{stderr}");
}

#[test]
fn input_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.txt");
    std::fs::write(&path, b"fine\n\xc3\n").unwrap();
    let out = classify(
        &["--format", "jsonl", "--input", path.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let recs = jsonl(&out);
    assert!(recs[1]["error"]
        .as_str()
        .unwrap()
        .contains("reviews.txt line 2"));
    let out = classify(&["--input", "/no/such/file.txt"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.txt"));
}

#[test]
fn empty_input_exits_1_and_errors_exit_2() {
    let out = classify(&[], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().count() == 1 && stderr.contains("no input") && stderr.contains("--input"),
        "one line saying how to give input: {stderr}"
    );

    let out = bert_cli()
        .args(["classify", "--model", "./no-such-model", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("./no-such-model"));

    let out = classify(&["--max-length", "1000", "x"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_position_embeddings"));

    let out = classify(&["--format", "yaml", "x"], b"");
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2 too");

    let out = bert_cli()
        .args(["classify", "--model", "", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the model name is empty"));

    // BERT: [CLS] a [SEP] needs 3; 2 leaves no room, said for a single text.
    let out = classify(&["--max-length", "2", "x"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a single text takes 2 special tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3 reads one token of a single text; a pair's [CLS] a [SEP] b [SEP] does not fit,
    // and only a pair is refused, naming the pair.
    let out = classify(&["--max-length", "3", "-f", "jsonl", "x"], b"");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = classify(&["--max-length", "3", "--text-pair", "y", "x"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no room for a pair"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn asking_for_cuda_in_a_cpu_build_says_how_to_rebuild() {
    let out = classify(&["--device", "cuda", "x"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
}

#[test]
fn bare_encoder_is_refused_with_advice() {
    let out = bert_cli()
        .args(["classify", "--model"])
        .arg(minilm_encoder())
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--allow-untrained-head") && stderr.contains("fine-tuned"),
        "{stderr}"
    );

    let out = bert_cli()
        .args([
            "classify",
            "--allow-untrained-head",
            "--labels",
            "a,b",
            "--model",
        ])
        .arg(minilm_encoder())
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("a ") || line.starts_with("b "), "{line}");
}

/// Results arrive while stdin is still open: the tool does not wait for end of input.
#[test]
fn stdin_results_stream_before_end_of_input() {
    let mut child = bert_cli()
        .args(["classify", "--format", "jsonl", "--model"])
        .arg(minilm_sst2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
        }
    });
    for text in ["a wonderful film", "a dreadful film"] {
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no result while stdin stays open");
        let rec: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(rec["text"], text);
    }
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `bert-cli classify < big.txt | head -1` ends quietly once the reader goes away.
#[test]
fn closed_stdout_pipe_is_not_a_crash() {
    let mut child = bert_cli()
        .args(["classify", "--model"])
        .arg(minilm_sst2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..20_000 {
            if writeln!(stdin, "line number {i} is quite good").is_err() {
                break;
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    writer.join().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "no message for a closed pipe: {stderr}");
}

#[test]
fn attention_dump_has_the_documented_schema_and_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attn.json");
    let out = classify(
        &[
            "--dump-attention",
            path.to_str().unwrap(),
            "the cat jumped",
            "I loved it",
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entries = dump.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    assert_eq!(e["text"], "the cat jumped");
    assert_eq!(e["record"], 1);
    assert!(e["model"].as_str().unwrap().contains("minilm-sst2"));
    assert_eq!(
        e["tokens"],
        serde_json::json!(["[CLS]", "the", "cat", "jumped", "[SEP]"])
    );
    assert_eq!(e["token_ids"].as_array().unwrap().len(), 5);
    assert_eq!(e["offsets"][2], serde_json::json!([4, 7]));
    assert_eq!(
        (e["num_layers"].as_u64(), e["num_heads"].as_u64()),
        (Some(6), Some(12))
    );
    assert!(e["prediction"]["label"].is_string() && e["prediction"]["score"].is_number());
    let reference = reference("minilm-sst2");
    let want = &reference["attention"][0];
    assert_eq!(want["text"], "the cat jumped");
    for l in 0..6 {
        for h in 0..12 {
            for q in 0..5 {
                let got = floats(&e["attention"][l][h][q]);
                assert_eq!(got.len(), 5, "padding removed");
                assert!(max_diff(&got, &floats(&want["attention"][l][h][q])) < 1e-5);
                assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }
    assert_eq!(entries[1]["tokens"].as_array().unwrap().len(), 5);
}

#[test]
fn bad_dump_path_fails_before_loading_the_model() {
    let out = bert_cli()
        .args([
            "classify",
            "--model",
            "./no-such-model",
            "--dump-attention",
            "/no/such/dir/attn.json",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/no/such/dir/attn.json") && !stderr.contains("no-such-model"),
        "{stderr}"
    );
}

#[test]
fn help_lists_the_flags_the_readme_documents() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // `flag` as a whole word of `text`: not part of a longer flag such as `--max-length-x`.
    let has_word = |text: &str, flag: &str| {
        text.match_indices(flag).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + flag.len()..].chars().next();
            !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-')
                && !matches!(after, Some(c) if c.is_ascii_alphanumeric() || c == '-')
        })
    };
    for command in ["classify", "zero-shot", "rerank", "download", "info"] {
        let out = bert_cli().args([command, "--help"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let help = String::from_utf8(out.stdout).unwrap();
        // Every `--long-flag` token of the help text: "--" at the start of a word, then a
        // lower-case letter, then letters, digits and dashes.
        let mut flags: Vec<String> = Vec::new();
        for (i, _) in help.match_indices("--") {
            let before = help[..i].chars().next_back();
            if matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-') {
                continue;
            }
            let name: String = help[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let name = name.trim_end_matches('-');
            if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                continue;
            }
            let flag = format!("--{name}");
            if !flags.contains(&flag) {
                flags.push(flag);
            }
        }
        // The parse must have found something; every subcommand has these two.
        for flag in ["--revision", "--quiet"] {
            assert!(
                flags.iter().any(|f| f == flag),
                "no {flag} found in `{command} --help`:\n{help}"
            );
        }
        for flag in &flags {
            if flag == "--help" || flag == "--version" {
                continue;
            }
            assert!(
                has_word(readme.as_str(), flag.as_str()),
                "README lacks {flag} (from `bert-cli {command} --help`)"
            );
        }
    }
}

/// More threads than cores only contend (`-j 999` took 47 s on 2 cores for what 2
/// threads did in 0.6 s): the count is capped with a note, and the answers are the same.
/// A RAYON_NUM_THREADS that is not a count is an error, not ignored.
#[test]
fn threads_are_capped_at_the_cores_and_bad_counts_refused() {
    let cases = dev_cases(3);
    let texts: String = cases.iter().map(|(t, _)| format!("{t}\n")).collect();
    let plain = classify(&["--format", "tsv"], texts.as_bytes());
    let many = classify(&["--format", "tsv", "-j", "999"], texts.as_bytes());
    assert!(many.status.success());
    assert_eq!(many.stdout, plain.stdout);
    let err = String::from_utf8_lossy(&many.stderr);
    assert!(
        err.contains("note: -j 999") && err.contains("CPU cores"),
        "{err}"
    );
    let out = run_with_stdin(
        bert_cli()
            .args(["classify", "--model"])
            .arg(minilm_sst2())
            .env("RAYON_NUM_THREADS", "abc"),
        texts.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RAYON_NUM_THREADS=\"abc\""), "{err}");
}

/// Help that cannot be written is an error (exit 2, said on stderr), not a silent 0;
/// help to a working stdout stays 0, and a usage error stays 2.
#[test]
fn help_to_a_full_disk_fails() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        say("SKIPPED: no /dev/full on this system");
        return;
    };
    let out = bert_cli()
        .arg("--help")
        .stdout(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the help"));
    let ok = bert_cli().arg("--help").output().unwrap();
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Usage"));
    let usage = bert_cli().arg("--no-such-flag").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

/// Flag values that are not counts are named as such: `-k -1` is a bad count, not a
/// text; `--max-batch-tokens 0` says "at least 1", not u64's range.
#[test]
fn bad_counts_are_named() {
    let out = bert_cli()
        .args(["rerank", "--query", "q", "-k", "-1", "doc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"-1\" is not a count"), "{err}");
    let out = bert_cli()
        .args(["classify", "--max-batch-tokens", "0", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at least 1") && !err.contains("18446744073709551615"),
        "{err}"
    );
}

/// `-o FILE` writes what standard output would get, whole; a run that fails leaves what
/// was at FILE before, and no temporary file beside it.
#[test]
fn output_file_is_written_whole_or_not_at_all() {
    let cases = dev_cases(4);
    let texts: String = cases.iter().map(|(t, _)| format!("{t}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.tsv");
    let to_stdout = classify(&["--format", "tsv"], texts.as_bytes());
    let to_file = classify(
        &["--format", "tsv", "-o", path.to_str().unwrap()],
        texts.as_bytes(),
    );
    assert!(to_file.status.success());
    assert!(to_file.stdout.is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), to_stdout.stdout);
    // A model that cannot load: the earlier results stay as they were.
    let failed = run_with_stdin(
        bert_cli()
            .args(["classify", "--format", "tsv", "-o"])
            .arg(&path)
            .args(["--model", "/no/such/model"]),
        texts.as_bytes(),
    );
    assert_eq!(failed.status.code(), Some(2));
    assert_eq!(std::fs::read(&path).unwrap(), to_stdout.stdout);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
