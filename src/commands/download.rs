//! `bert-cli download`: fetch every file a model needs into the cache.

use std::io::{self, Write};

use anyhow::Result;

use super::{file_size, human_size, EXIT_OK};
use bert_cli::cli::ModelRefArgs;
use bert_cli::hub;

/// Resolves every file, prints where each landed.
pub fn run(args: ModelRefArgs) -> Result<u8> {
    let files = hub::resolve(&args.model, &args.hub.options(args.quiet))?;
    let mut out = io::stdout().lock();
    for f in files.all() {
        writeln!(out, "{:>10}  {}", human_size(file_size(f)), f.display())?;
    }
    if files.cache_dir.is_some() {
        writeln!(
            out,
            "ready for offline use: bert-cli classify --offline --model {}",
            files.id
        )?;
    }
    Ok(EXIT_OK)
}
