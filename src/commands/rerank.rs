//! `bert-cli rerank`: documents scored against a query by a cross-encoder, best first.

use anyhow::{bail, Result};

use super::job::{finish, load, on_pool, open_io};
use bert_cli::cli::{RankArgs, RerankArgs};
use bert_cli::models::config::Scoring;
use bert_cli::output::{self, rerank::Ranked};
use bert_cli::task::Task;

/// Runs the job.
pub fn run(mut args: RerankArgs) -> Result<u8> {
    let opts = args.input.input_options(false, None);
    let (dump, source, results) = open_io(&mut args.input, &opts, None, &args.output, &args.run)?;
    on_pool(move || {
        let options = args.run.engine_options(None);
        let mut engine = load(&args.model, &args.run, &options)?;
        if engine.labels.len() != 1 {
            bail!(
                "{} has {} outputs ({}); rerank needs a cross-encoder with one relevance score (such as {})",
                engine.model_id,
                engine.labels.len(),
                engine.labels.join(", "),
                bert_cli::models::DEFAULT_RERANK_MODEL
            );
        }
        engine.scoring = if args.raw_scores {
            Scoring::None
        } else {
            engine.cross_encoder_scoring.unwrap_or(Scoring::Sigmoid)
        };
        let task = Task::Rerank {
            query: args.query.clone(),
        };
        let (kind, mut format) = args.output.format(
            &engine.labels,
            false,
            &RankArgs::default(),
            args.input.id_field.is_some(),
            &source.records,
        );
        format.ranking = true;
        let out = Box::new(Ranked::new(
            output::writer(kind, results.writer(), format),
            args.top_k,
        ));
        finish(&engine, &task, source, out, dump, results, &args.run)
    })
}
