//! The real download code against a loopback server that speaks the Hugging Face Hub's
//! file protocol (the hub itself is unreachable from CI): downloads, the shared cache,
//! offline use, tokens, and every failure's message.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use sha2::Digest;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_s3cr3t_t0k3n";

/// A repo the server knows: its files and, if private, the token it wants.
#[derive(Clone)]
struct RepoSpec {
    dir: PathBuf,
    files: Vec<&'static str>,
    token: Option<&'static str>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoSpec>,
    /// Files whose next full download is cut off halfway.
    cut_once: HashSet<String>,
    /// Files sent with one byte changed: the next `n` full downloads.
    corrupt: HashMap<String, usize>,
    /// "METHOD path" of every request.
    log: Vec<String>,
}

/// A loopback HTTP/1.1 server for `/{repo}/resolve/{revision}/{file}`.
struct HubServer {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl HubServer {
    fn start(repos: &[(&str, RepoSpec)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            repos: repos
                .iter()
                .map(|(id, r)| (id.to_string(), r.clone()))
                .collect(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let handle = thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    thread::spawn(move || {
                        let _ = serve(conn, &st);
                    });
                }
            }
        });
        Self {
            port,
            state,
            stop,
            handle: Some(handle),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut_once(&self, file: &str) {
        self.state.lock().unwrap().cut_once.insert(file.to_string());
    }

    fn corrupt(&self, file: &str, times: usize) {
        self.state
            .lock()
            .unwrap()
            .corrupt
            .insert(file.to_string(), times);
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Closes the port: later connections are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut out = conn;
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {path}"));
    let reply = |out: &mut TcpStream, status: &str, extra: &[(&str, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(body)?;
        }
        out.flush()
    };
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return reply(&mut out, "404 Not Found", &[], b"");
    };
    let (revision, file) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(repo) = st.repos.get(repo_id).cloned() else {
        return reply(
            &mut out,
            "404 Not Found",
            &[("X-Error-Code", "RepoNotFound".into())],
            b"Repository not found",
        );
    };
    if let Some(token) = repo.token {
        if headers.get("authorization") != Some(&format!("Bearer {token}")) {
            return reply(
                &mut out,
                "401 Unauthorized",
                &[("X-Error-Code", "GatedRepo".into())],
                b"Access restricted",
            );
        }
    }
    if revision != "main" && revision != COMMIT {
        return reply(
            &mut out,
            "404 Not Found",
            &[("X-Error-Code", "RevisionNotFound".into())],
            b"",
        );
    }
    let commit = ("X-Repo-Commit", COMMIT.to_string());
    if !repo.files.contains(&file) {
        return reply(
            &mut out,
            "404 Not Found",
            &[("X-Error-Code", "EntryNotFound".into()), commit],
            b"",
        );
    }
    let mut data = std::fs::read(repo.dir.join(file))?;
    // As the hub: an LFS file's ETag (and X-Linked-Etag) is its sha256, any other file's
    // the git blob id.
    let lfs = file.ends_with(".safetensors") || file.ends_with(".bin");
    let etag = if lfs {
        hex(&sha2::Sha256::digest(&data))
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", data.len()).as_bytes());
        h.update(&data);
        hex(&h.finalize())
    };
    let linked = ("X-Linked-Etag", format!("\"{etag}\""));
    let etag = ("ETag", format!("\"{etag}\""));
    if method == "GET" && data.len() > 1 && headers.get("range").is_none_or(|r| r != "bytes=0-0") {
        if let Some(n) = st.corrupt.get_mut(file).filter(|n| **n > 0) {
            *n -= 1;
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        }
    }
    let n = data.len();
    let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                n - 1
            } else {
                b.parse::<usize>().unwrap().min(n - 1)
            };
            (a, b)
        }
        None => (0, n - 1),
    };
    let range = ("Content-Range", format!("bytes {start}-{end}/{n}"));
    let body = &data[start..=end];
    let full_get = method == "GET" && end > start;
    if full_get && st.cut_once.remove(file) {
        // Promise the whole body, send half, hang up.
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Length: {}\r\n{}: {}\r\n{}: {}\r\n\r\n",
            body.len(),
            range.0,
            range.1,
            etag.0,
            etag.1
        );
        drop(st);
        out.write_all(head.as_bytes())?;
        out.write_all(&body[..body.len() / 2])?;
        return out.shutdown(std::net::Shutdown::Both);
    }
    drop(st);
    let mut extra = vec![commit, etag, range, ("Accept-Ranges", "bytes".into())];
    if lfs {
        extra.push(linked);
    }
    reply(&mut out, "206 Partial Content", &extra, body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

const FIXTURE_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
];

fn fixture_repo() -> RepoSpec {
    RepoSpec {
        dir: minilm_sst2(),
        files: FIXTURE_FILES.to_vec(),
        token: None,
    }
}

/// The binary with a clean Hugging Face environment rooted in `home`.
fn bert_cli(home: &Path, endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bert-cli"));
    for v in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
        "BERT_CLI_MODEL",
    ] {
        c.env_remove(v);
    }
    c.env("HOME", home).env("HF_ENDPOINT", endpoint);
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn classify(cmd: &mut Command, model: &str, extra: &[&str]) -> Output {
    cmd.args(["classify", "--model", model])
        .args(extra)
        .args(["a wonderful film", "a dreadful film"])
        .output()
        .unwrap()
}

fn assert_classified(out: &Output) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("POSITIVE") && lines[1].starts_with("NEGATIVE"),
        "{stdout}"
    );
}

fn repo_cache(hub_cache: &Path, id: &str) -> PathBuf {
    hub_cache.join(format!("models--{}", id.replace('/', "--")))
}

#[test]
fn downloads_then_classifies_offline_from_the_cache() {
    let mut server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &[],
    );
    assert_classified(&out);
    assert!(
        server.log().iter().any(|r| r.contains("model.safetensors")),
        "{:?}",
        server.log()
    );
    let cache = repo_cache(
        &home.path().join(".cache/huggingface/hub"),
        "acme/minilm-sst2",
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("refs/main")).unwrap(),
        COMMIT
    );
    let snap = cache
        .join("snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    assert_eq!(
        std::fs::metadata(&snap).unwrap().len(),
        std::fs::metadata(minilm_sst2().join("model.safetensors"))
            .unwrap()
            .len()
    );

    server.stop();
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &["--offline"],
    );
    assert_classified(&out);
    let out = classify(
        bert_cli(home.path(), &server.endpoint()).env("HF_HUB_OFFLINE", "1"),
        "acme/minilm-sst2",
        &[],
    );
    assert_classified(&out);
    // Not offline, server gone, everything cached: still works.
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &[],
    );
    assert_classified(&out);
}

#[test]
fn download_and_info_prepare_and_describe_an_offline_model() {
    let mut server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let hub_cache = home.path().join("hub-cache");
    let out = bert_cli(home.path(), &server.endpoint())
        .env("HF_HOME", home.path().join("hf-home"))
        .env("HF_HUB_CACHE", &hub_cache)
        .args(["download", "acme/minilm-sst2"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("model.safetensors") && stdout.contains("--offline"),
        "{stdout}"
    );
    assert!(
        repo_cache(&hub_cache, "acme/minilm-sst2")
            .join("refs/main")
            .exists(),
        "HF_HUB_CACHE wins over HF_HOME"
    );
    assert!(!home.path().join("hf-home/hub").exists());
    server.stop();

    // Offline, `download` finds the files but cannot check them, and says so.
    let out = bert_cli(home.path(), &server.endpoint())
        .env("HF_HUB_CACHE", &hub_cache)
        .args(["download", "--offline", "acme/minilm-sst2"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("offline: not checked against the hub")
            && !stdout.contains("checked and ready"),
        "{stdout}"
    );

    let out = bert_cli(home.path(), &server.endpoint())
        .env("HF_HUB_CACHE", &hub_cache)
        .args(["info", "--offline", "acme/minilm-sst2"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for want in [
        "6 layers",
        "12 heads",
        "hidden size 384",
        "512 tokens",
        "NEGATIVE, POSITIVE",
        "trained classifier",
        "models--acme--minilm-sst2",
        "90.9 MB",
    ] {
        assert!(stdout.contains(want), "info lacks {want:?}:\n{stdout}");
    }
}

#[test]
fn xdg_cache_home_is_used_when_no_hf_variable_is_set() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let xdg = home.path().join("xdg");
    let out = bert_cli(home.path(), &server.endpoint())
        .env("XDG_CACHE_HOME", &xdg)
        .args(["download", "--quiet", "acme/minilm-sst2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert!(repo_cache(&xdg.join("huggingface/hub"), "acme/minilm-sst2")
        .join("refs/main")
        .exists());
}

#[test]
fn offline_without_cache_names_the_file_and_the_fix() {
    let home = tempfile::tempdir().unwrap();
    let out = classify(
        &mut bert_cli(home.path(), "http://127.0.0.1:9"),
        "acme/absent",
        &["--offline"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("config.json") && stderr.contains("bert-cli download acme/absent`"),
        "{stderr}"
    );
    // At another revision, the fix names it.
    let out = classify(
        &mut bert_cli(home.path(), "http://127.0.0.1:9"),
        "acme/absent",
        &["--offline", "--revision", "v2"],
    );
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("bert-cli download acme/absent --revision v2`"),
        "{stderr}"
    );
}

#[test]
fn unreachable_network_suggests_offline_or_a_mirror() {
    let home = tempfile::tempdir().unwrap();
    let mut server = HubServer::start(&[]);
    let endpoint = server.endpoint();
    server.stop();
    let out = classify(
        &mut bert_cli(home.path(), &endpoint),
        "acme/minilm-sst2",
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("cannot reach")
            && stderr.contains("--offline")
            && stderr.contains("HF_ENDPOINT"),
        "{stderr}"
    );
}

#[test]
fn missing_repo_revision_and_files_are_named() {
    let server = HubServer::start(&[
        ("acme/minilm-sst2", fixture_repo()),
        (
            "acme/no-tokenizer",
            RepoSpec {
                dir: minilm_sst2(),
                files: vec!["config.json", "model.safetensors"],
                token: None,
            },
        ),
    ]);
    let home = tempfile::tempdir().unwrap();
    let run = |model: &str, extra: &[&str]| {
        let out = classify(&mut bert_cli(home.path(), &server.endpoint()), model, extra);
        assert_eq!(out.status.code(), Some(2));
        text(&out).1
    };
    let e = run("acme/nope", &[]);
    assert!(e.contains("repository acme/nope not found"), "{e}");
    let e = run("acme/minilm-sst2", &["--revision", "v9"]);
    assert!(
        e.contains("revision \"v9\" not found in acme/minilm-sst2"),
        "{e}"
    );
    let e = run("acme/no-tokenizer", &[]);
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab.txt") && e.contains("acme/no-tokenizer"),
        "{e}"
    );
    // The commit hash works as a revision.
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &["--revision", COMMIT],
    );
    assert_classified(&out);
}

#[test]
fn private_repo_needs_a_token_that_is_never_printed() {
    let repo = RepoSpec {
        token: Some(TOKEN),
        ..fixture_repo()
    };
    let server = HubServer::start(&[("acme/private", repo)]);
    let home = tempfile::tempdir().unwrap();
    let out = classify(
        bert_cli(home.path(), &server.endpoint()).env("HF_TOKEN", "hf_wrong_token"),
        "acme/private",
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("gated or private") && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );
    assert!(!stderr.contains("hf_wrong_token") && !stdout.contains("hf_wrong_token"));

    let out = classify(
        bert_cli(home.path(), &server.endpoint()).env("HF_TOKEN", TOKEN),
        "acme/private",
        &[],
    );
    assert_classified(&out);
    assert!(!text(&out).1.contains(TOKEN));

    // The token file `huggingface-cli login` writes works too.
    let home2 = tempfile::tempdir().unwrap();
    let hf_home = home2.path().join(".cache/huggingface");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), format!("{TOKEN}\n")).unwrap();
    assert_classified(&classify(
        &mut bert_cli(home2.path(), &server.endpoint()),
        "acme/private",
        &[],
    ));
}

#[test]
fn a_cut_download_leaves_no_corrupt_file_and_the_next_run_succeeds() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    server.cut_once("model.safetensors");
    let home = tempfile::tempdir().unwrap();
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &[],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("cut off"),
        "{stderr}"
    );
    let cache = repo_cache(
        &home.path().join(".cache/huggingface/hub"),
        "acme/minilm-sst2",
    );
    assert!(
        !cache
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors")
            .exists(),
        "no half file in the snapshot"
    );

    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &[],
    );
    assert_classified(&out);
    let got = std::fs::read(
        cache
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors"),
    )
    .unwrap();
    assert!(
        got == std::fs::read(minilm_sst2().join("model.safetensors")).unwrap(),
        "the file is whole"
    );
}

/// Lays out a cache the way Python's huggingface_hub does: blobs/, snapshots/ symlinks, refs/.
fn python_cache(hub_cache: &Path, id: &str, src: &Path, files: &[&str]) {
    let repo = repo_cache(hub_cache, id);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for f in files {
        let blob = format!("{:016x}", fnv(f.as_bytes()));
        std::fs::copy(src.join(f), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(f)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
}

#[test]
fn a_cache_laid_out_by_python_is_used_without_a_download() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let hub_cache = home.path().join(".cache/huggingface/hub");
    python_cache(
        &hub_cache,
        "acme/minilm-sst2",
        &minilm_sst2(),
        &FIXTURE_FILES,
    );
    let out = classify(
        &mut bert_cli(home.path(), &server.endpoint()),
        "acme/minilm-sst2",
        &[],
    );
    assert_classified(&out);
    assert!(
        server.log().is_empty(),
        "no request needed: {:?}",
        server.log()
    );
}

#[test]
fn when_the_network_fails_the_cache_is_used_and_said_once() {
    // Only pytorch_model.bin is cached, so the preferred model.safetensors is looked up
    // online first; the hub is down, so the cached .bin is used, with one warning.
    let home = tempfile::tempdir().unwrap();
    let hub_cache = home.path().join(".cache/huggingface/hub");
    let files = [
        "config.json",
        "pytorch_model.bin",
        "vocab.txt",
        "tokenizer_config.json",
    ];
    python_cache(&hub_cache, "acme/tiny", &committed("tiny-bin"), &files);
    let out = bert_cli(home.path(), "http://127.0.0.1:9")
        .args(["classify", "--model", "acme/tiny", "the movie was great"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(
        stderr.matches("unreachable").count(),
        1,
        "said once: {stderr}"
    );
    assert!(stderr.contains("using the cached files"), "{stderr}");
}

#[test]
fn a_repo_with_only_pytorch_bin_is_fetched_and_then_works_offline() {
    let tiny = RepoSpec {
        dir: committed("tiny-bin"),
        files: vec![
            "config.json",
            "pytorch_model.bin",
            "vocab.txt",
            "tokenizer_config.json",
        ],
        token: None,
    };
    let mut server = HubServer::start(&[("acme/tiny", tiny)]);
    let home = tempfile::tempdir().unwrap();
    let run = |cmd: &mut Command, extra: &[&str]| {
        cmd.args(["classify", "--model", "acme/tiny"])
            .args(extra)
            .arg("the movie was great")
            .output()
            .unwrap()
    };
    let out = run(&mut bert_cli(home.path(), &server.endpoint()), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    server.stop();
    // Offline, the cache remembers that model.safetensors does not exist (.no_exist/).
    let out = run(
        &mut bert_cli(home.path(), &server.endpoint()),
        &["--offline"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

/// Other families download too: a RoBERTa repo without `tokenizer.json` is fetched with
/// its `vocab.json` + `merges.txt` and classifies offline afterwards as PyTorch did; an
/// XLM-R repo without `tokenizer.json` (SentencePiece only) is refused, naming the file.
#[test]
fn a_roberta_repo_downloads_with_its_bpe_files_and_sentencepiece_only_is_refused() {
    let server = HubServer::start(&[
        (
            "acme/roberta",
            RepoSpec {
                dir: family_dir("roberta"),
                files: vec![
                    "config.json",
                    "model.safetensors",
                    "vocab.json",
                    "merges.txt",
                    "tokenizer_config.json",
                ],
                token: None,
            },
        ),
        (
            "acme/xlmr-spm",
            RepoSpec {
                dir: family_dir("xlm-roberta"),
                files: vec![
                    "config.json",
                    "model.safetensors",
                    "sentencepiece.bpe.model",
                ],
                token: None,
            },
        ),
    ]);
    let home = tempfile::tempdir().unwrap();
    let reference = reference("family-roberta");
    let case = &reference["cases"][0];
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family_dir("roberta").join("config.json")).unwrap(),
    )
    .unwrap();
    let want = config["id2label"][case["label"].as_u64().unwrap().to_string()]
        .as_str()
        .unwrap()
        .to_string();
    let run = |extra: &[&str]| {
        bert_cli(home.path(), &server.endpoint())
            .args(["classify", "--model", "acme/roberta", "--format", "tsv"])
            .args(extra)
            .arg(case["text"].as_str().unwrap())
            .output()
            .unwrap()
    };
    for extra in [&[][..], &["--offline"][..]] {
        let out = run(extra);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let row = stdout.lines().nth(1).unwrap_or_default();
        assert_eq!(row.split('\t').nth(1), Some(want.as_str()), "{stdout}");
    }
    let out = bert_cli(home.path(), &server.endpoint())
        .args(["classify", "--model", "acme/xlmr-spm", "x"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("tokenizer.json") && stderr.contains("acme/xlmr-spm"),
        "{stderr}"
    );
}

#[test]
fn info_reads_the_weights_header_by_range_requests_without_downloading_them() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let hub_cache = home.path().join("hub-cache");
    let info = |format: &str| {
        bert_cli(home.path(), &server.endpoint())
            .env("HF_HUB_CACHE", &hub_cache)
            .args(["info", "--format", format, "acme/minilm-sst2"])
            .output()
            .unwrap()
    };
    let out = info("human");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for want in [
        "6 layers",
        "trained classifier",
        "NEGATIVE, POSITIVE",
        "22.7M",
        "model.safetensors (on the hub, not downloaded",
        "90.9 MB",
    ] {
        assert!(stdout.contains(want), "info lacks {want:?}:\n{stdout}");
    }
    // Nothing near the weights' size reached the cache: only config and tokenizer.
    let blobs = repo_cache(&hub_cache, "acme/minilm-sst2").join("blobs");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(biggest < 2_000_000, "a {biggest}-byte file was downloaded");

    let out = info("json");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["layers"], 6);
    assert_eq!(v["head"], "trained");
    assert_eq!(v["weights"][0]["file"], "model.safetensors");
    assert_eq!(v["weights"][0]["downloaded"], false);
    let size = std::fs::metadata(minilm_sst2().join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(v["weights"][0]["size"], size);
    assert!(v["parameters"].as_u64().unwrap() > 22_000_000);
}

/// The cached blob `file` of `id` points to.
fn cached_blob(home: &Path, id: &str, file: &str) -> PathBuf {
    let snap = repo_cache(&home.join(".cache/huggingface/hub"), id)
        .join("snapshots")
        .join(COMMIT)
        .join(file);
    std::fs::canonicalize(snap).unwrap()
}

fn cut_to(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_damaged_cache_is_named_repaired_online_and_refused_offline() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let home = tempfile::tempdir().unwrap();
    let id = "acme/minilm-sst2";
    let out = bert_cli(home.path(), &server.endpoint())
        .args(["download", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let weights = cached_blob(home.path(), id, "model.safetensors");
    let whole = std::fs::metadata(&weights).unwrap().len();
    // Cut at 0, 4, 8 bytes and at half: offline, each is named, as damaged, with the fix.
    for len in [0, 4, 8, whole / 2] {
        cut_to(&weights, len);
        let out = classify(
            &mut bert_cli(home.path(), &server.endpoint()),
            id,
            &["--offline"],
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("model.safetensors")
                && stderr.contains("is damaged")
                && stderr.contains(&format!("bert-cli download --force {id}")),
            "cut at {len}: {stderr}"
        );
    }
    // Online, the damaged file is fetched again once, with a warning, and the run goes on.
    let out = classify(&mut bert_cli(home.path(), &server.endpoint()), id, &[]);
    assert_classified(&out);
    assert!(
        text(&out).1.contains("fetching it again"),
        "{}",
        text(&out).1
    );
    let weights = cached_blob(home.path(), id, "model.safetensors");
    assert_eq!(std::fs::metadata(&weights).unwrap().len(), whole);

    // A damaged file no header shows (the tokenizer, one byte changed): `download`
    // hashes every cached file against its ETag and fetches it again.
    let vocab = cached_blob(home.path(), id, "tokenizer.json");
    let mut bytes = std::fs::read(&vocab).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&vocab, &bytes).unwrap();
    let out = bert_cli(home.path(), &server.endpoint())
        .args(["download", id])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("tokenizer.json")
            && stderr.contains("git blob id")
            && stderr.contains("fetching it again"),
        "{stderr}"
    );
    assert!(
        stdout.contains("checked and ready for offline use"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(cached_blob(home.path(), id, "tokenizer.json")).unwrap(),
        std::fs::read(minilm_sst2().join("tokenizer.json")).unwrap()
    );

    // --force fetches every file again; offline it is refused.
    let before = server.log().len();
    let out = bert_cli(home.path(), &server.endpoint())
        .args(["download", "--force", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let fetched: Vec<String> = server.log()[before..]
        .iter()
        .filter(|l| l.starts_with("GET"))
        .cloned()
        .collect();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            fetched.iter().any(|l| l.ends_with(f)),
            "{f} not fetched again: {fetched:?}"
        );
    }
    let out = bert_cli(home.path(), &server.endpoint())
        .args(["download", "--force", "--offline", id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("--force fetches files again"),
        "{}",
        text(&out).1
    );
}

#[test]
fn a_download_that_arrives_damaged_is_fetched_again_then_refused() {
    let server = HubServer::start(&[("acme/minilm-sst2", fixture_repo())]);
    let id = "acme/minilm-sst2";
    server.corrupt("model.safetensors", 1);
    let home = tempfile::tempdir().unwrap();
    let out = classify(&mut bert_cli(home.path(), &server.endpoint()), id, &[]);
    assert_classified(&out);
    let gets = server
        .log()
        .iter()
        .filter(|l| l.starts_with("GET") && l.ends_with("model.safetensors"))
        .count();
    assert!(
        gets >= 2,
        "fetched again after a bad hash: {:?}",
        server.log()
    );

    server.corrupt("config.json", 5);
    let home = tempfile::tempdir().unwrap();
    let out = classify(&mut bert_cli(home.path(), &server.endpoint()), id, &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("config.json") && stderr.contains("arrived damaged twice"),
        "{stderr}"
    );
    let snap = repo_cache(&home.path().join(".cache/huggingface/hub"), id)
        .join("snapshots")
        .join(COMMIT)
        .join("config.json");
    assert!(!snap.exists(), "nothing damaged kept");
}

#[test]
fn a_damaged_local_weights_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(minilm_sst2().join(f), dir.path().join(f)).unwrap();
    }
    let data = std::fs::read(minilm_sst2().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &data[..data.len() - 100],
    )
    .unwrap();
    let out = bert_cli(dir.path(), "http://127.0.0.1:9")
        .args(["classify", "--model", dir.path().to_str().unwrap(), "x"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("model.safetensors is damaged") && stderr.contains("cut short"),
        "{stderr}"
    );
}
