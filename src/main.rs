//! Entry point: parses the flags, runs the subcommand, and turns the outcome into an
//! exit status (0 ok, 1 no input, 2 error; a closed stdout is a quiet 0).

mod commands;

use std::io;
use std::process::ExitCode;

use clap::Parser;

use bert_cli::cli::{Cli, Command};
use commands::{EXIT_ERROR, EXIT_OK};

fn main() -> ExitCode {
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set, and prints it
    // inside the one-line error message; keep those for panics only, unless asked.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(err),
    };
    let result = match cli.command {
        Command::Classify(args) => commands::classify::run(*args),
        Command::ZeroShot(args) => commands::zero_shot::run(*args),
        Command::Rerank(args) => commands::rerank::run(*args),
        Command::Download(args) => commands::download::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Completions { shell } => commands::shell::completions(shell),
        Command::Man => commands::shell::man(),
        Command::View(args) => commands::view::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("bert-cli: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// What clap's own `exit` does (help and version on stdout with 0, usage errors on
/// stderr with 2), except that help or version that cannot be written (`--help >
/// /dev/full`) is an error, not a silent success.
fn clap_exit(err: clap::Error) -> ExitCode {
    use std::io::Write;

    let printed = err.print().and_then(|()| io::stdout().flush());
    if !err.use_stderr() {
        return match printed {
            Ok(()) => ExitCode::from(EXIT_OK),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_OK),
            Err(e) => {
                eprintln!("bert-cli: error: cannot write the help to standard output: {e}");
                ExitCode::from(EXIT_ERROR)
            }
        };
    }
    ExitCode::from(EXIT_ERROR)
}

/// A reader that went away (`| head`) is not an error worth a message.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
