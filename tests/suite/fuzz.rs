//! Seeded fuzzing: random bytes and line structures at the input readers, random text at
//! the tokenizers, random mutations of valid `config.json`, `tokenizer.json` and
//! safetensors headers at the loaders. Nothing may panic; the readers give one record (or
//! error record) per record, numbered in order. `BERT_CLI_FUZZ_CASES` scales every
//! generator (default 1, a few thousand cases in all); `BERT_CLI_FUZZ_SEED` picks the seed;
//! `scripts/fuzz N` runs them longer. A failure names the seed and case to replay.

use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bert_cli::engine::{Engine, EngineOptions};
use bert_cli::input::{self, InputFormat, InputOptions};
use bert_cli::tokenize::{PairTruncation, TextTokenizer, TokenizerFiles};
use common::committed;
use serde_json::Value;

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn scale() -> usize {
    std::env::var("BERT_CLI_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("BERT_CLI_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201)
}

/// Runs `case` for `n` seeds, turning a panic into a failure that names the case.
fn cases(name: &str, n: usize, mut case: impl FnMut(&mut Rng)) {
    let base = seed();
    for i in 0..n {
        let mut rng = Rng::new(base ^ (i as u64).wrapping_mul(0x1000_0000_01B3));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: case {i} (BERT_CLI_FUZZ_SEED={base}) panicked: {msg}");
        }
    }
    common::say(&format!("fuzz {name}: {n} cases, seed {base}"));
}

/// Bytes with structure: pieces of JSON, CSV quoting, separators, invalid UTF-8, BOMs.
fn messy_bytes(rng: &mut Rng) -> Vec<u8> {
    let pieces: [&[u8]; 24] = [
        b"\n",
        b"\r\n",
        b"\0",
        b"\t",
        b",",
        b"\"",
        b"\"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b"\"text\"",
        b"\"id\"",
        b"text",
        b"hello world",
        b"\xff",
        b"\xc3",
        b"\xe2\x82",
        "\u{feff}".as_bytes(),
        b"\\",
        b"\\u0000",
        b"null",
        "é東😀".as_bytes(),
    ];
    let n = rng.below(60);
    let mut out = Vec::new();
    for _ in 0..n {
        if rng.below(5) == 0 {
            out.push(rng.next() as u8);
        } else {
            let piece: &&[u8] = rng.pick(&pieces);
            out.extend_from_slice(piece);
        }
    }
    out
}

#[test]
fn input_readers_give_one_record_per_record_in_order() {
    let formats = [
        InputFormat::Lines,
        InputFormat::Jsonl,
        InputFormat::Csv,
        InputFormat::Tsv,
    ];
    cases("readers", 3000 * scale(), |rng| {
        let data = messy_bytes(rng);
        let format = *rng.pick(&formats);
        let lines = format == InputFormat::Lines;
        let delimited = matches!(format, InputFormat::Csv | InputFormat::Tsv);
        // Only the flag combinations `open` accepts (the others are refused up front).
        let opts = InputOptions {
            format,
            field: [
                None,
                Some("text".to_string()),
                Some("2".into()),
                Some("/a/b".into()),
            ][if lines { 0 } else { rng.below(4) }]
            .clone(),
            id_field: [None, Some("id".to_string())][if lines { 0 } else { rng.below(2) }].clone(),
            pair_tab: lines && rng.below(3) == 0,
            header: !delimited || rng.below(2) == 0,
            null_data: lines && rng.below(4) == 0,
            ..InputOptions::default()
        };
        let opened = input::open(Box::new(std::io::Cursor::new(data.clone())), "fuzz", &opts);
        let records = match opened {
            Ok(records) => records,
            // A CSV/TSV header naming no such column is refused before any record: fine.
            Err(e) if delimited => {
                let e = format!("{e:#}");
                assert!(e.contains("column"), "{e}");
                return;
            }
            Err(e) => panic!("{format:?} {opts:?} refused: {e:#}"),
        };
        let mut expected = 1;
        for item in records.items {
            let Ok(item) = item else { break };
            assert_eq!(item.number, expected, "records numbered in order");
            expected += 1;
            if let Some(e) = &item.error {
                assert!(e.contains("fuzz"), "an error names its source: {e}");
            }
        }
        if format == InputFormat::Lines {
            // One record per separator-terminated chunk, and one for a final unterminated one.
            let sep = if opts.null_data { b'\0' } else { b'\n' };
            let chunks = data.split(|&b| b == sep).count()
                - usize::from(data.last() == Some(&sep) || data.is_empty());
            assert_eq!(expected - 1, chunks, "every line is a record: {data:?}");
        }
    });
}

/// Random text: words, whitespace of every kind, control characters, unpaired marks,
/// special-token look-alikes, long runs without spaces.
fn messy_text(rng: &mut Rng) -> String {
    let pieces = [
        "the",
        "film",
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\u{3000}",
        "\u{a0}",
        "\u{200b}",
        "\u{0}",
        "\u{1b}[31m",
        "[CLS]",
        "[SEP]",
        "<s>",
        "</s>",
        "<pad>",
        "[MASK]",
        "é",
        "e\u{301}",
        "東京",
        "😀",
        "👩‍👩‍👧",
        "\u{fffd}",
        "'s",
        "don't",
        "3.5",
        "--",
        "...",
        "ﬁ",
        "İ",
        "ß",
    ];
    let n = rng.below(80);
    let mut s = String::new();
    for _ in 0..n {
        if rng.below(20) == 0 {
            s.push_str(&"x".repeat(rng.below(300)));
        } else if rng.below(10) == 0 {
            s.push(char::from_u32(rng.below(0x3_0000) as u32).unwrap_or('?'));
        } else {
            let piece: &&str = rng.pick(&pieces);
            s.push_str(piece);
        }
    }
    s
}

fn tokenizer(dir: &Path, max_length: usize) -> TextTokenizer {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    TextTokenizer::load(
        &TokenizerFiles::Json(dir.join("tokenizer.json")),
        max_length,
        cfg["vocab_size"].as_u64().unwrap() as usize,
    )
    .unwrap()
    .with_piece_bytes(16)
}

#[test]
fn tokenizers_take_any_text() {
    let tokenizers: Vec<(String, TextTokenizer)> = common::FAMILIES
        .iter()
        .map(|f| (f.to_string(), tokenizer(&committed("families").join(f), 24)))
        .collect();
    cases("tokenizers", 1500 * scale(), |rng| {
        let (name, tok) = rng.pick(&tokenizers);
        let (a, b) = (messy_text(rng), messy_text(rng));
        let one = tok.encode(&a).unwrap();
        assert!(one.ids.len() <= 24, "{name}: {} tokens", one.ids.len());
        let pair = tok
            .encode_pair(&a, &b, PairTruncation::LongestFirst)
            .unwrap();
        assert!(
            pair.ids.len() <= 24,
            "{name} pair: {} tokens",
            pair.ids.len()
        );
        // only_first may refuse (the second text alone too long), never panic.
        let _ = tok.encode_pair(&a, &b, PairTruncation::OnlyFirst);
        let stride = rng.below(25);
        match tok.windows(&a, stride, rng.below(2) == 0) {
            Ok(w) => assert!(!w.is_empty() && w.iter().all(|e| e.ids.len() <= 24)),
            Err(e) => assert!(e.to_string().contains("--stride"), "{e}"),
        }
    });
}

/// A JSON value changed the way a broken or hostile file would have it.
fn mutate_json(rng: &mut Rng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = rng.pick(&keys).clone();
            match rng.below(6) {
                0 => {
                    map.remove(&k);
                }
                1 if depth < 6 => mutate_json(rng, map.get_mut(&k).unwrap(), depth + 1),
                _ => {
                    let replacement = [
                        Value::Null,
                        Value::from(-1),
                        Value::from(0),
                        Value::from(1u64 << 40),
                        Value::from(1.5),
                        Value::from("x"),
                        Value::from(Vec::<Value>::new()),
                        serde_json::json!({"0": "a"}),
                        Value::from(true),
                    ];
                    map.insert(k, rng.pick(&replacement).clone());
                }
            }
        }
        Value::Array(xs) if !xs.is_empty() => {
            let i = rng.below(xs.len());
            if rng.below(3) == 0 {
                xs.remove(i);
            } else if depth < 6 {
                mutate_json(rng, &mut xs[i], depth + 1);
            }
        }
        _ => *v = Value::from(-7),
    }
}

/// A safetensors file with a mutated header (same data), or cut at a random byte.
fn mutate_safetensors(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    if rng.below(4) == 0 {
        return bytes[..rng.below(bytes.len())].to_vec();
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for _ in 0..1 + rng.below(3) {
        mutate_json(rng, &mut header, 0);
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn loaders_refuse_damaged_files_without_panicking() {
    let src = committed("families").join("electra");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let tokenizer = std::fs::read(src.join("tokenizer.json")).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut loaded, mut refused) = (0, 0);
    cases("loaders", 300 * scale(), |rng| {
        let d = dir.path();
        let mut cfg = config.clone();
        let mut tok = tokenizer.clone();
        let mut w = weights.clone();
        match rng.below(3) {
            0 => {
                for _ in 0..1 + rng.below(3) {
                    mutate_json(rng, &mut cfg, 0);
                }
            }
            1 => {
                if rng.below(2) == 0 {
                    tok.truncate(rng.below(tok.len()));
                } else {
                    let mut t: Value = serde_json::from_slice(&tok).unwrap();
                    mutate_json(rng, &mut t, 0);
                    tok = serde_json::to_vec(&t).unwrap();
                }
            }
            _ => w = mutate_safetensors(rng, &weights),
        }
        std::fs::write(d.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        std::fs::write(d.join("tokenizer.json"), &tok).unwrap();
        std::fs::write(d.join("model.safetensors"), &w).unwrap();
        let result =
            bert_cli::hub::resolve(d.to_str().unwrap(), &Default::default()).and_then(|files| {
                Engine::load(&files, candle_core::Device::Cpu, &EngineOptions::default())
            });
        match result {
            Ok(engine) => {
                loaded += 1;
                // Whatever loaded must classify or refuse an input, not crash.
                if let Ok(enc) = engine.encode("a short text") {
                    let _ = engine.predict(&[&enc], false);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!format!("{e:#}").is_empty());
            }
        }
    });
    common::say(&format!("fuzz loaders: {loaded} loaded, {refused} refused"));
    assert!(refused > 0, "mutations were refused");
}
