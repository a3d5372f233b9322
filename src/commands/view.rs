//! `bert-cli view DUMP.json -o PAGE.html`.

use anyhow::Result;

use super::EXIT_OK;
use bert_cli::cli::ViewArgs;
use bert_cli::output::attention::view;

/// Writes the page and says where.
pub fn run(args: ViewArgs) -> Result<u8> {
    let looks_html = args
        .input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    if looks_html {
        anyhow::bail!(
            "{} is already a page: view reads the JSON dump that --dump-attention FILE.json \
             writes and turns it into a page (--dump-attention FILE.html writes the page directly)",
            args.input.display()
        );
    }
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension("html"));
    let n = view::json_to_html(&args.input, &output)?;
    eprintln!(
        "bert-cli: wrote {} ({n} input{}); open it in a browser",
        output.display(),
        if n == 1 { "" } else { "s" }
    );
    Ok(EXIT_OK)
}
