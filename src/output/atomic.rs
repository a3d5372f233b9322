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
        let in_place = |file: File| Self {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp: None,
            path: path.to_path_buf(),
            written: 0,
        };
        let target = link_target(path)?;
        // `/dev/stdout` and its kin: the stream this process already has, offset and
        // append mode included (reopened by name, a redirected file would be rewritten
        // from its start, or replaced).
        if let Some(fd) = target.own_fd {
            let file = crate::input::process_stream(fd)
                .with_context(|| format!("cannot write to {} (descriptor {fd})", path.display()))?;
            return Ok(in_place(file));
        }
        let target = target.path;
        match std::fs::metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                anyhow::bail!("{} is a folder; name a file in it", path.display())
            }
            Ok(meta) if !meta.is_file() => return Ok(in_place(open_pipe(path)?)),
            _ => {}
        }
        let path = &target;
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        remove_on_signals();
        remove_orphans(path, &name.to_string_lossy());
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

/// Where a path leads once its symbolic links are followed.
struct Target {
    /// The file (as far as the links lead: a link to a file not yet there names it).
    path: PathBuf,
    /// The descriptor of this process the path stands for (`/dev/stdout`, `/dev/fd/N`,
    /// `/proc/self/fd/N`), if it passes through one.
    own_fd: Option<i32>,
}

fn link_target(path: &Path) -> Result<Target> {
    let mut path = path.to_path_buf();
    // As many links as Linux follows before it gives up on a loop.
    for _ in 0..40 {
        if let Some(fd) = fd_name(&path) {
            return Ok(Target {
                path,
                own_fd: Some(fd),
            });
        }
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => return Ok(Target { path, own_fd: None }),
        }
    }
    anyhow::bail!("{}: too many levels of symbolic links", path.display())
}

/// The descriptor a path names, if it is one of this process's: `/dev/stdin`, `/dev/stdout`,
/// `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`, `/proc/<this pid>/fd/N`.
fn fd_name(path: &Path) -> Option<i32> {
    let text = path.to_str()?;
    match text {
        "/dev/stdin" => return Some(0),
        "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let own = format!("/proc/{}/fd/", std::process::id());
    let n = text
        .strip_prefix("/dev/fd/")
        .or_else(|| text.strip_prefix("/proc/self/fd/"))
        .or_else(|| text.strip_prefix(own.as_str()))?;
    n.parse().ok()
}

/// Opens a FIFO, socket or device to write; a FIFO with no reader yet is said to be
/// waited on (opening it blocks until one comes).
fn open_pipe(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(path)
    };
    let what = || format!("cannot open {} for writing", path.display());
    match open(libc::O_NONBLOCK) {
        Ok(file) => {
            // Opened without waiting; writes should wait for a full pipe to drain. (This
            // handle must be the one kept: closing it would hand its reader an end of file.)
            use std::os::fd::AsRawFd;
            let fd = file.as_raw_fd();
            // SAFETY: `fd` is open for as long as `file` lives; F_GETFL/F_SETFL only
            // read and set its status flags.
            let cleared = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) >= 0
            };
            if !cleared {
                return Err(std::io::Error::last_os_error()).with_context(what);
            }
            Ok(file)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            eprintln!("bert-cli: waiting for a reader on {}", path.display());
            open(0).with_context(what)
        }
        Err(e) => Err(e).with_context(what),
    }
}

/// Refuses to write `output` where `input` is (standard input when `None`): the run would
/// replace the file it reads.
pub fn not_the_input(output: &Path, input: Option<&Path>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    let read = match input {
        Some(p) => std::fs::metadata(p).ok(),
        None => crate::input::process_stream(0)
            .and_then(|f| f.metadata())
            .ok(),
    };
    if let Some(read) = read {
        if out.is_file() && out.dev() == read.dev() && out.ino() == read.ino() {
            anyhow::bail!(
                "{} is also the input: writing it would replace what is being read; name another file",
                output.display()
            );
        }
    }
    Ok(())
}

/// Removes the temporary files of earlier runs writing `path` that died before they
/// could (`kill -9`, a crash): `.NAME.tmp-PID` whose process is gone. A live process's
/// file, another user's, or one whose PID is reused is left alone.
fn remove_orphans(path: &Path, name: &str) {
    let Some(dir) = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    }) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.tmp-");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && pid as u32 != std::process::id() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
