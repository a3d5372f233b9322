//! `bert-cli zero-shot`: candidate labels judged by an NLI model.

use anyhow::Result;

use super::job::{finish, load, on_pool, open_io};
use bert_cli::cli::ZeroShotArgs;
use bert_cli::engine::EngineOptions;
use bert_cli::output;
use bert_cli::task::{Task, ZeroShot};

/// Runs the job.
pub fn run(mut args: ZeroShotArgs) -> Result<u8> {
    // A template Python would refuse is refused before the model loads.
    bert_cli::task::fill_template(&args.hypothesis_template, "x")?;
    let opts = args.input.input_options(false, None);
    let (dump, source, results) = open_io(&mut args.input, &opts, None, &args.output, &args.run)?;
    on_pool(move || {
        let options = EngineOptions {
            labels_flag: Some("--model-labels"),
            ..args.run.engine_options(args.model_labels.clone())
        };
        let engine = load(&args.model, &args.run, &options)?;
        let zero_shot = ZeroShot::new(
            args.labels.iter().chain(&args.label).cloned().collect(),
            &args.hypothesis_template,
            args.multi_label,
            &engine.labels,
        )?;
        let multi_label = zero_shot.multi_label;
        let task = Task::ZeroShot(zero_shot);
        let mut rank = std::mem::take(&mut args.rank);
        // Every candidate, best first, unless asked otherwise: the pipeline's answer.
        rank.top_k.get_or_insert(usize::MAX);
        let (kind, format) = args.output.format(
            task.labels(&engine.labels),
            multi_label,
            &rank,
            args.input.id_field.is_some(),
            &source.records,
        );
        let out = output::writer(kind, results.writer(), format);
        finish(&engine, &task, source, out, dump, results, &args.run)
    })
}
