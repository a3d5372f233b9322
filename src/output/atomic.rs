//! Files the tool writes, complete or not at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::{Context, Result};

/// A file written under a temporary name beside `path` and renamed into place by
/// `commit`; dropped uncommitted, or on SIGINT, SIGTERM or SIGHUP, the temporary file is
/// removed, so the path only ever holds a complete file (or what was there before).
pub struct AtomicFile {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    written: u64,
}

impl AtomicFile {
    /// Creates the temporary file (failing at once on a bad folder or permissions).
    pub fn create(path: &Path) -> Result<Self> {
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
            tmp,
            path: path.to_path_buf(),
            written: 0,
        })
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
        out.write_all(bytes)
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let out = self
            .out
            .take()
            .context("internal error: file already committed")?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        let mut pending = pending();
        pending.retain(|p| *p != self.tmp);
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            let _ = std::fs::remove_file(&self.tmp);
            format!(
                "cannot move {} into place at {}",
                self.tmp.display(),
                self.path.display()
            )
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            pending().retain(|p| *p != self.tmp);
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
