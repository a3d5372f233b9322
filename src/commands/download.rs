//! `bert-cli download`: fetch every file a model needs into the cache, checked.

use std::io::{self, Write};

use anyhow::Result;

use super::{file_size, human_size, EXIT_OK};
use bert_cli::cli::DownloadArgs;
use bert_cli::hub::{self, HubOptions};

/// Resolves every file (checking cached ones against their ETags, or fetching all again
/// with `--force`), prints where each landed.
pub fn run(args: DownloadArgs) -> Result<u8> {
    let m = &args.model;
    let opts = HubOptions {
        force: args.force,
        verify_cached: true,
        ..m.hub.options(m.quiet)
    };
    let files = hub::resolve(&m.model, &opts)?;
    let mut out = io::stdout().lock();
    for f in files.all() {
        writeln!(out, "{:>10}  {}", human_size(file_size(f)), f.display())?;
    }
    if files.cache_dir.is_some() {
        // Offline, the cache is all there is to compare with: nothing was checked.
        let how = if opts.is_offline() {
            "in the cache (offline: not checked against the hub)"
        } else {
            "checked and ready for offline use"
        };
        writeln!(
            out,
            "{how}: bert-cli classify --offline --model {}",
            files.id
        )?;
    }
    Ok(EXIT_OK)
}
