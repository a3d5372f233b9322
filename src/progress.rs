//! The progress bar of a long `classify` run, on stderr: records done and their rate, and
//! with an input file of known size, the share of its bytes read and an ETA. Drawn only
//! when stderr is a terminal, so pipes and logs never see it.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar, or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Whether the bar counts bytes of a file of known size (else records).
    by_bytes: bool,
}

impl Progress {
    /// No bar.
    pub fn hidden() -> Self {
        Self {
            bar: None,
            by_bytes: false,
        }
    }

    /// A bar on stderr (which the caller has found to be a terminal); `total_bytes` is the
    /// input file's size when known.
    pub fn on_stderr(total_bytes: Option<u64>) -> Self {
        let by_bytes = total_bytes.is_some_and(|n| n > 0);
        let bar = ProgressBar::with_draw_target(
            total_bytes.filter(|_| by_bytes),
            ProgressDrawTarget::stderr(),
        );
        let template = if by_bytes {
            // The bar takes the width the rest leaves, so the line never wraps.
            "{spinner} {percent:>3}% {wide_bar} {msg} records  {binary_bytes}/{binary_total_bytes}  ETA {eta}"
        } else {
            "{spinner} {msg} records  {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message("0");
        // Ticks from a thread of its own, so the bar moves even while one long batch runs.
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar: Some(bar),
            by_bytes,
        }
    }

    /// `records` done so far, through byte `end_byte` of the input; `rate` in records/s.
    pub fn update(&self, records: usize, end_byte: u64) {
        if let Some(bar) = &self.bar {
            let secs = bar.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{records} ({:.0}/s)", records as f64 / secs));
            if self.by_bytes {
                bar.set_position(end_byte);
            }
        }
    }

    /// Runs `f` (which writes to the terminal) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
