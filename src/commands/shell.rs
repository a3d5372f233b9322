//! `bert-cli completions SHELL` and `bert-cli man`: both generated from the clap
//! definitions in `cli`, so they list exactly the flags `--help` does.

use std::io::{self, Write};

use anyhow::Result;
use clap::CommandFactory;

use super::EXIT_OK;
use bert_cli::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bert-cli", &mut script);
    if shell == clap_complete::Shell::Bash {
        script = mend_bash(&String::from_utf8_lossy(&script)).into_bytes();
    }
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(EXIT_OK)
}

/// clap_complete's bash script (4.6) names a subcommand's state `bert__cli__subcmd__X`
/// where it walks the words, but `bert__subcmd__cli__subcmd__X` where it completes them:
/// the hyphen in `bert-cli` is spelled two ways (clap-rs/clap#6421), so nothing after a
/// subcommand ever completed. One spelling for both.
fn mend_bash(script: &str) -> String {
    script.replace("bert__subcmd__cli__subcmd__", "bert__cli__subcmd__")
}

/// `cmd` with each flag's visible aliases named at the end of its help, as `--help`
/// shows them: clap_mangen (0.2) leaves aliases out of the page.
fn with_aliases_in_help(cmd: clap::Command) -> clap::Command {
    let aliased: Vec<(clap::Id, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let aliases = a.get_visible_aliases()?;
            let names: Vec<String> = aliases.iter().map(|n| format!("--{n}")).collect();
            Some((
                a.get_id().clone(),
                format!(" [alias: {}]", names.join(", ")),
            ))
        })
        .collect();
    aliased.into_iter().fold(cmd, |cmd, (id, note)| {
        cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| format!("{h}{note}"));
            let long = a.get_long_help().map(|h| format!("{h}{note}"));
            let a = match help {
                Some(h) => a.help(h),
                None => a,
            };
            match long {
                Some(h) => a.long_help(h),
                None => a,
            }
        })
    })
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
        let sub = with_aliases_in_help(sub.clone()).bin_name(name.clone());
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
    page.extend_from_slice(MAN_TAIL.as_bytes());
    top.render_version_section(&mut page)?;
    let mut out = io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(EXIT_OK)
}

/// The man page's sections that no flag declares: examples, environment, exit status.
const MAN_TAIL: &str = r#".SH EXAMPLES
.TP
\fBbert\-cli classify "I didn't really enjoy this movie. It was fantastic!"\fR
Classify one text with the default sentiment model.
.TP
\fBcat reviews.txt | bert\-cli classify \-\-format jsonl > labels.jsonl\fR
One JSON object per input line, in input order.
.TP
\fBbert\-cli classify \-i reviews.csv \-\-field review \-\-format csv\fR
Each CSV row back with the prediction's columns added.
.TP
\fBbert\-cli zero\-shot \-\-labels sports,politics,tech "The match went to penalties"\fR
Candidate labels judged by an NLI model.
.TP
\fBbert\-cli rerank \-\-query "cheap flights" \-i docs.txt \-k 5\fR
The five documents a cross-encoder scores highest.
.TP
\fBbert\-cli classify \-\-device cpu \-\-dump\-attention attn.html "the cat jumped"\fR
The attention of every layer and head, as a page to open in a browser.
.SH ENVIRONMENT
.TP
\fBBERT_CLI_MODEL\fR
The model classify, info and download use when none is named.
.TP
\fBHF_HOME\fR, \fBHF_HUB_CACHE\fR, \fBXDG_CACHE_HOME\fR
Where the Hugging Face cache is (as Python's huggingface_hub reads them).
.TP
\fBHF_ENDPOINT\fR
A mirror to download from instead of https://huggingface.co.
.TP
\fBHF_TOKEN\fR, \fBHF_TOKEN_PATH\fR
A token for private or gated repos (never printed).
.TP
\fBHF_HUB_OFFLINE\fR
1: use the cache only, as \-\-offline.
.TP
\fBRAYON_NUM_THREADS\fR
CPU threads, as \-j (capped at the cores this process may use).
.TP
\fBBERT_CLI_PORTABLE\fR
1: candle's matrix products instead of the CPU kernels, on any CPU.
.SH "EXIT STATUS"
0 when every input was classified; 1 when there was no input; 2 on an error, including
any input that could not be classified (the others are still written).
"#;
