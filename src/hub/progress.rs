//! A download progress bar on stderr: file name, size, speed and time left.

use hf_hub::api::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// An indicatif bar that hf-hub drives; hidden unless asked for.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A visible bar when `show`, else one that draws nothing.
    pub fn new(show: bool) -> Self {
        Self(show.then(ProgressBar::no_length))
    }
}

impl Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        if let Some(bar) = &self.0 {
            let style = ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_length(size as u64);
            bar.set_position(0);
            bar.set_message(filename.to_string());
        }
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
