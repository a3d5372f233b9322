//! One hub repository: files come from the Hugging Face cache when they are there, else
//! they are downloaded through hf-hub into it. Every failure names the repo and the file.

use std::cell::{Cell, RefCell};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Error};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use super::env;
use super::progress::Bar;

/// Why a file could not be had.
pub enum Miss {
    /// The repo does not have this file (or it is not cached while offline): another
    /// candidate file may still do.
    Absent(Error),
    /// Nothing else will work either (repo missing, no access, ...).
    Fatal(Error),
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Never touch the network.
    pub offline: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Fetch every file again, whatever the cache holds (`download --force`).
    pub force: bool,
    /// Check cached files' content against their ETags too, not only fresh downloads
    /// (`download`: reading a whole weights file costs seconds).
    pub verify_cached: bool,
    /// Say on stderr when a damaged cached file is fetched again.
    pub warn: bool,
}

/// A repo at a revision, backed by the local cache.
pub struct Remote {
    id: String,
    revision: String,
    endpoint: String,
    /// `<cache>/models--owner--name`.
    repo_dir: PathBuf,
    api: Option<ApiRepo>,
    progress: bool,
    force: bool,
    verify_cached: bool,
    warn: bool,
    /// Set after the first connection failure: later files come from the cache only.
    unreachable: RefCell<Option<String>>,
    used_cache_after_failure: Cell<bool>,
}

impl Remote {
    /// Sets up access to `id` at `revision`.
    pub fn new(id: &str, revision: &str, opts: &RemoteOptions) -> anyhow::Result<Self> {
        let cache = env::cache_dir();
        let endpoint = env::endpoint();
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
        let repo_dir = cache.join(repo.folder_name());
        if opts.force && opts.offline {
            return Err(anyhow!(
                "--force fetches files again, which --offline (or HF_HUB_OFFLINE) forbids"
            ));
        }
        let api = if opts.offline {
            None
        } else {
            let api = ApiBuilder::new()
                .with_cache_dir(cache)
                .with_endpoint(endpoint.clone())
                .with_token(env::token())
                .with_progress(false)
                .build()
                .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
            Some(api.repo(repo))
        };
        Ok(Self {
            id: id.to_string(),
            revision: revision.to_string(),
            endpoint,
            repo_dir,
            api,
            progress: opts.progress,
            force: opts.force,
            verify_cached: opts.verify_cached,
            warn: opts.warn,
            unreachable: RefCell::new(None),
            used_cache_after_failure: Cell::new(false),
        })
    }

    /// Where this repo's files sit in the cache.
    pub fn cache_dir(&self) -> &Path {
        &self.repo_dir
    }

    /// When the network failed but the cache had everything: the failure, to say once.
    pub fn fell_back_to_cache(&self) -> Option<String> {
        self.unreachable
            .borrow()
            .clone()
            .filter(|_| self.used_cache_after_failure.get())
    }

    /// The commit a branch or tag points at in the cache (a commit hash is itself).
    fn cached_commit(&self) -> Option<String> {
        if self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(self.revision.clone());
        }
        let commit =
            std::fs::read_to_string(self.repo_dir.join("refs").join(&self.revision)).ok()?;
        Some(commit.trim().to_string())
    }

    /// The cached copy of `file`, if any (snapshots/ entries may be symlinks into blobs/).
    fn cached(&self, file: &str) -> Option<PathBuf> {
        let commit = self.cached_commit()?;
        let path = self.repo_dir.join("snapshots").join(commit).join(file);
        path.is_file().then_some(path)
    }

    /// Whether the cache records that the repo has no `file` (Python's `.no_exist/` marker).
    fn known_absent(&self, file: &str) -> bool {
        self.cached_commit()
            .is_some_and(|c| self.repo_dir.join(".no_exist").join(c).join(file).exists())
    }

    /// Records that the repo has no `file` at `commit`, as `huggingface_hub` does, so an
    /// offline run later knows to use the next candidate.
    fn mark_absent(&self, commit: &str, file: &str) {
        let marker = self.repo_dir.join(".no_exist").join(commit).join(file);
        if let Some(parent) = marker.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(marker, b"");
        let _ = std::fs::create_dir_all(self.repo_dir.join("refs"));
        let ref_path = self.repo_dir.join("refs").join(&self.revision);
        if commit != self.revision && !ref_path.exists() {
            let _ = std::fs::write(ref_path, commit);
        }
    }

    /// `file` from the cache, else from the hub. A cached file found damaged (a
    /// safetensors file cut short; with `verify_cached`, any content that does not hash to
    /// its ETag) is fetched again once when online, and an error saying how to repair it
    /// when offline; a fresh download is checked against its ETag and fetched again once.
    pub fn fetch(&self, file: &str) -> Result<PathBuf, Miss> {
        if let Some(path) = self.cached(file) {
            if self.force && self.api.is_some() {
                self.forget(&path);
                return self.download(file);
            }
            match self.damage(&path, self.verify_cached) {
                None => {
                    if self.unreachable.borrow().is_some() {
                        self.used_cache_after_failure.set(true);
                    }
                    return Ok(path);
                }
                Some(why) => {
                    let fix = format!("{} in the cache is damaged ({why})", path.display());
                    if self.online(file, "download --force").is_err() {
                        return Err(Miss::Fatal(anyhow!(
                            "{fix}; run `bert-cli download --force {}` while online to fetch it again",
                            self.id
                        )));
                    }
                    if self.warn {
                        eprintln!("bert-cli: warning: {fix}; fetching it again");
                    }
                    self.forget(&path);
                    return self.download(file);
                }
            }
        }
        if self.known_absent(file) {
            return Err(Miss::Absent(anyhow!(
                "{} has no {file} (revision {})",
                self.id,
                self.revision
            )));
        }
        self.download(file)
    }

    /// Downloads `file`, checks it against its ETag, and tries once more if it does not
    /// match.
    fn download(&self, file: &str) -> Result<PathBuf, Miss> {
        let api = self.online(file, "download")?;
        let mut last = String::new();
        for _ in 0..2 {
            let path = api
                .download_with_progress(file, Bar::new(self.progress))
                .map_err(|e| self.classify(file, e))?;
            match self.damage(&path, true) {
                None => return Ok(path),
                Some(why) => {
                    self.forget(&path);
                    last = why;
                }
            }
        }
        Err(Miss::Fatal(anyhow!(
            "{file} of {} arrived damaged twice from {} ({last}); nothing damaged was kept in the cache: try again later",
            self.id,
            self.endpoint
        )))
    }

    /// What is wrong with the cached copy at `path`, if anything: a safetensors file cut
    /// short (always checked: two small reads), or content that does not hash to the
    /// ETag its blob is named by (`hash`: reads the whole file).
    fn damage(&self, path: &Path, hash: bool) -> Option<String> {
        if path.extension().is_some_and(|e| e == "safetensors") {
            if let Some(why) = crate::weights::safetensors_damage(path) {
                return Some(why);
            }
        }
        if !hash {
            return None;
        }
        let blob = std::fs::canonicalize(path).ok()?;
        let etag = blob.file_name()?.to_str()?.to_string();
        super::verify::against_etag(&blob, &etag).err()
    }

    /// Removes a cached file: its snapshot entry and the blob it points to, so the next
    /// fetch downloads it whole.
    fn forget(&self, path: &Path) {
        if let Ok(blob) = std::fs::canonicalize(path) {
            if blob.starts_with(self.repo_dir.join("blobs")) {
                let _ = std::fs::remove_file(&blob);
            }
        }
        let _ = std::fs::remove_file(path);
    }

    /// The hub client, unless offline or the network already failed; `command` is what
    /// to run online first to have `file` cached.
    fn online(&self, file: &str, command: &str) -> Result<&ApiRepo, Miss> {
        let Some(api) = &self.api else {
            let revision = match self.revision.as_str() {
                "main" => String::new(),
                other => format!(" --revision {other}"),
            };
            return Err(Miss::Absent(anyhow!(
                "offline, and {file} of {} (revision {}) is not in the cache at {}; \
                 run `bert-cli {command} {}{revision}` while online first",
                self.id,
                self.revision,
                self.repo_dir.display(),
                self.id
            )));
        };
        if let Some(reason) = self.unreachable.borrow().as_ref() {
            return Err(Miss::Absent(anyhow!(
                "{file} of {} is not in the cache and {} is unreachable ({reason})",
                self.id,
                self.endpoint
            )));
        }
        Ok(api)
    }

    /// The cached copy of `file`, without touching the network.
    pub fn cached_file(&self, file: &str) -> Option<PathBuf> {
        self.cached(file)
    }

    /// Bytes `start..=end` of `file` and the file's whole size, by an HTTP range request
    /// (the way the hub's own clients read a safetensors header without the weights).
    pub fn read_range(&self, file: &str, start: u64, end: u64) -> Result<(Vec<u8>, u64), Miss> {
        self.online(file, "info")?;
        let url = format!(
            "{}/{}/resolve/{}/{file}",
            self.endpoint,
            self.id,
            self.revision.replace('/', "%2F")
        );
        let mut request = ureq::get(&url).set("Range", &format!("bytes={start}-{end}"));
        if let Some(token) = env::token() {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = request
            .call()
            .map_err(|e| self.classify(file, ApiError::RequestError(Box::new(e))))?;
        let total = response
            .header("content-range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| n.parse().ok());
        let whole = response.status() == 200;
        let mut body = Vec::new();
        let want = end.saturating_sub(start) + 1;
        std::io::Read::take(response.into_reader(), want)
            .read_to_end(&mut body)
            .map_err(|e| {
                Miss::Fatal(anyhow!(
                    "cannot read {file} of {} from {}: {e}",
                    self.id,
                    self.endpoint
                ))
            })?;
        let total = match (total, whole) {
            (Some(n), _) => n,
            // A server that ignores ranges sends the whole file from byte 0.
            (None, true) if start == 0 => body.len() as u64,
            _ => {
                return Err(Miss::Fatal(anyhow!(
                    "{} did not answer a range request for {file} of {} with its size",
                    self.endpoint,
                    self.id
                )))
            }
        };
        Ok((body, total))
    }

    /// Turns an hf-hub error into a message that says what happened and what to do.
    fn classify(&self, file: &str, err: ApiError) -> Miss {
        let (id, rev, endpoint) = (&self.id, &self.revision, &self.endpoint);
        match err {
            ApiError::RequestError(boxed) => match *boxed {
                ureq::Error::Status(status, response) => {
                    let code = response.header("x-error-code").unwrap_or("").to_string();
                    let commit = response.header("x-repo-commit").map(str::to_string);
                    match (status, code.as_str()) {
                        (404, "EntryNotFound") => {
                            if let Some(c) = commit {
                                self.mark_absent(&c, file);
                            }
                            Miss::Absent(anyhow!("{id} has no {file} (revision {rev})"))
                        }
                        (404, "RevisionNotFound") => Miss::Fatal(anyhow!(
                            "revision {rev:?} not found in {id}: check the branch, tag or commit given to --revision"
                        )),
                        (401 | 403, "GatedRepo") | (403, _) => Miss::Fatal(anyhow!(
                            "{id} is gated or private and this request was refused ({status}): accept its terms at \
                             {endpoint}/{id} and pass a token with access through HF_TOKEN (or `huggingface-cli login`)"
                        )),
                        (401 | 404, _) => Miss::Fatal(anyhow!(
                            "repository {id} not found on {endpoint} ({status}): check the name, or if it is private, \
                             pass a token through HF_TOKEN (or `huggingface-cli login`)"
                        )),
                        _ => Miss::Fatal(anyhow!(
                            "cannot fetch {file} from {id} (revision {rev}): the server answered {status} {}",
                            response.status_text()
                        )),
                    }
                }
                ureq::Error::Transport(t) => {
                    let reason = t.to_string();
                    *self.unreachable.borrow_mut() = Some(reason.clone());
                    Miss::Absent(anyhow!(
                        "cannot reach {endpoint} to fetch {file} of {id} ({reason}); \
                         use --offline for a cached model, or set HF_ENDPOINT to a mirror"
                    ))
                }
            },
            ApiError::IoError(e) => Miss::Fatal(anyhow!(
                "download of {file} from {id} was cut off ({e}); nothing broken was kept in the cache \
                 (the partial file under {} resumes on the next run): run the command again",
                self.repo_dir.join("blobs").display()
            )),
            ApiError::LockAcquisition(p) => Miss::Fatal(anyhow!(
                "another process is downloading {file} of {id} (lock {}); wait for it and retry",
                p.display()
            )),
            other => Miss::Fatal(anyhow!("cannot fetch {file} from {id} (revision {rev}): {other}")),
        }
    }
}
