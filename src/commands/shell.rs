//! `bert-cli completions SHELL` and `bert-cli man`: both generated from the clap
//! definitions in `cli`, so they list exactly the flags `--help` does.

use std::io::{self, Write};

use anyhow::Result;
use clap::CommandFactory;

use super::EXIT_OK;
use bert_cli::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut Cli::command(), "bert-cli", &mut out);
    out.flush()?;
    Ok(EXIT_OK)
}

/// Prints one man page: the tool, then each subcommand with its options.
pub fn man() -> Result<u8> {
    let cmd = Cli::command();
    let mut page = Vec::new();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    for sub in cmd.get_subcommands() {
        let name = format!("bert-cli {}", sub.get_name());
        let sub = sub.clone().bin_name(name.clone());
        let mut part = Vec::new();
        let man = clap_mangen::Man::new(sub.clone());
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut part)?;
        }
        // Each subcommand's sections become subsections under its own heading.
        let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
        writeln!(page, ".SH \"{}\"", name.to_uppercase())?;
        page.extend_from_slice(part.as_bytes());
    }
    top.render_version_section(&mut page)?;
    let mut out = io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(EXIT_OK)
}
