//! `bert-cli classify`: each record's text (or pair) through a classifier.

use anyhow::{bail, Result};

use super::job::{finish, load, on_pool, open_io};
use bert_cli::cli::ClassifyArgs;
use bert_cli::engine::EngineOptions;
use bert_cli::models::config::Scoring;
use bert_cli::output;
use bert_cli::task::{LongText, Task};

/// `bert-cli classify`.
pub fn run(mut args: ClassifyArgs) -> Result<u8> {
    args.check()?;
    let opts = args.input.input_options(args.pair, args.pair_field.clone());
    let pair = args.text_pair.clone();
    let (dump, source, results) = open_io(&mut args.input, &opts, pair, &args.output, &args.run)?;
    on_pool(move || {
        let options = EngineOptions {
            scoring: args.function_to_apply,
            ..args.run.engine_options(args.labels.clone())
        };
        let engine = load(&args.model, &args.run, &options)?;
        let task = Task::Classify(args.long_text(engine.scoring));
        if let Task::Classify(LongText::Chunk { stride, .. }) = task {
            if stride >= engine.window_tokens() {
                bail!(
                    "--stride {stride} must be less than the {} text tokens of a window (--max-length {} less the special tokens)",
                    engine.window_tokens(),
                    engine.max_length
                );
            }
        }
        let multi_label = engine.scoring == Scoring::Sigmoid && engine.labels.len() > 1;
        let (kind, mut format) = args.output.format(
            &engine.labels,
            multi_label,
            &args.rank,
            args.input.id_field.is_some(),
            &source.records,
        );
        format.pairs = args.pair || args.pair_field.is_some() || args.text_pair.is_some();
        let out = output::writer(kind, results.writer(), format);
        finish(&engine, &task, source, out, dump, results, &args.run)
    })
}
