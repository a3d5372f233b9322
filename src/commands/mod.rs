//! One module per subcommand; each returns the exit status it ends with.

pub mod classify;
pub mod download;
pub mod info;
pub mod job;
pub mod rerank;
pub mod shell;
pub mod view;
pub mod zero_shot;

/// Every input classified (or the command did what it was asked).
pub const EXIT_OK: u8 = 0;
/// Nothing to classify.
pub const EXIT_NO_INPUT: u8 = 1;
/// Something failed.
pub const EXIT_ERROR: u8 = 2;

/// A file's size, 0 when it cannot be read.
fn file_size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes in KB/MB/GB (powers of 1000, like the hub's web pages).
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}
