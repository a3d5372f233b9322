//! Files the tool writes, complete or not at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{Context, Result};

/// A file written under a temporary name beside `path` and renamed into place by
/// `commit`; dropped uncommitted, or on SIGINT, SIGTERM or SIGHUP, the temporary file is
/// removed, so the path only ever holds a complete file (or what was there before).
/// Through a symbolic link, the file it names is the one replaced; a FIFO or a device
/// (`/dev/stdout`) is written in place, as there is no file there to keep whole.
pub struct AtomicFile {
    out: Option<BufWriter<File>>,
    /// Where the bytes go until `commit`; `None` when they go straight to `path`.
    tmp: Option<PathBuf>,
    path: PathBuf,
    written: u64,
}

impl AtomicFile {
    /// Creates the temporary file (failing at once on a bad folder or permissions).
    pub fn create(path: &Path) -> Result<Self> {
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() && !meta.is_dir() {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot open {} for writing", path.display()))?;
                return Ok(Self {
                    out: Some(BufWriter::with_capacity(1 << 20, file)),
                    tmp: None,
                    path: path.to_path_buf(),
                    written: 0,
                });
            }
        }
        let path = &link_target(path);
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        remove_on_signals();
        let file = File::create(&tmp)
            .with_context(|| format!("cannot create {} (for {})", tmp.display(), path.display()))?;
        pending().push(tmp.clone());
        Ok(Self {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp: Some(tmp),
            path: path.to_path_buf(),
            written: 0,
        })
    }

    /// Where the bytes are being written.
    fn writing(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.path)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .context("internal error: file already committed")?;
        if let Err(e) = out.write_all(bytes) {
            return Err(e).with_context(|| format!("cannot write {}", self.writing().display()));
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let out = self
            .out
            .take()
            .context("internal error: file already committed")?;
        let at = self.writing().display().to_string();
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {at}"))?;
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        file.sync_all()
            .with_context(|| format!("cannot write {at}"))?;
        let mut pending = pending();
        pending.retain(|p| *p != tmp);
        std::fs::rename(&tmp, &self.path).with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "cannot move {} into place at {}",
                tmp.display(),
                self.path.display()
            )
        })
    }
}

/// The file `path` names once its symbolic links are followed (as far as they lead: a
/// link to a file not yet there names that file).
fn link_target(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // As many links as Linux follows before giving up on a loop.
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => break,
        }
    }
    path
}

/// Refuses to write `output` where `input` is: the run would replace the file it reads.
pub fn not_the_input(output: &Path, input: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(output), std::fs::canonicalize(input)) {
        if a == b && a.is_file() {
            anyhow::bail!(
                "{} is also the input: writing it would replace what is being read; name another file",
                output.display()
            );
        }
    }
    Ok(())
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let (Some(_), Some(tmp)) = (self.out.take(), self.tmp.take()) {
            let _ = std::fs::remove_file(&tmp);
            pending().retain(|p| *p != tmp);
        }
    }
}

/// Temporary files not yet renamed into place.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Once per process: a thread that, on SIGINT, SIGTERM or SIGHUP, removes the pending
/// temporary files and then dies of the signal as it would have (so a shell sees 130 for
/// Ctrl-C). Results already on stdout are whole lines: each is written in one piece.
fn remove_on_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                for p in pending().drain(..) {
                    let _ = std::fs::remove_file(p);
                }
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        });
    });
}
