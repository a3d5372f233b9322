//! Command-line flags, and nothing else.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceSpec;
use crate::input::InputFormat;
use crate::models::config::Scoring;
use crate::models::{DEFAULT_MODEL, DEFAULT_RERANK_MODEL, DEFAULT_ZERO_SHOT_MODEL};
use crate::output::attention::DumpFormat;
use crate::output::FormatKind;
use crate::task::Aggregate;

/// Classify text with a BERT-family model (BERT, DistilBERT, RoBERTa, XLM-R, CamemBERT,
/// ELECTRA, DeBERTa-v2/v3, ModernBERT) or BART, on CUDA, Metal or CPU.
///
/// Exit status: 0 when every input was classified, 1 when there was no input,
/// 2 on an error (including any input that could not be classified; the others
/// are still printed).
#[derive(Debug, Parser)]
#[command(name = "bert-cli", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify each TEXT argument, or each record of --input or standard input: lines,
    /// JSON Lines objects, or CSV/TSV rows.
    ///
    /// Results come in input order, one per input record, as soon as they are ready. JSONL
    /// objects and CSV/TSV rows come back whole with the prediction added when the output
    /// format matches the input's.
    ///
    /// Exit status: 0 when every input was classified, 1 when there was no input, 2 on an
    /// error. A record that cannot be classified (not UTF-8, not JSON, no such field, wrong
    /// number of columns) gets an error record in its place, a warning on stderr and exit
    /// status 2; the others are kept.
    Classify(Box<ClassifyArgs>),

    /// Label each text with candidate labels it was never trained on, through an NLI
    /// model: each label becomes a hypothesis ("This example is {label}.") whose entailment
    /// score ranks it. Reads records as classify does; labels come out best first.
    ///
    /// Exit status: as classify.
    #[command(name = "zero-shot")]
    ZeroShot(Box<ZeroShotArgs>),

    /// Score each document (TEXT arguments, or records of --input or standard input)
    /// against --query with a cross-encoder, and print them best first with their
    /// 0-based index in the input.
    ///
    /// Exit status: as classify.
    Rerank(Box<RerankArgs>),

    /// Fetch everything MODEL needs into the Hugging Face cache, for later offline runs,
    /// and check every cached file against the hub's ETag (sha256 for weights): a damaged
    /// one is fetched again.
    Download(DownloadArgs),

    /// Show MODEL's architecture, labels and files. From the hub, only the config, the
    /// tokenizer and the weights' header are fetched, not the weights.
    Info(InfoArgs),

    /// Print a shell completion script to standard output, e.g.
    /// `bert-cli completions bash > ~/.local/share/bash-completion/completions/bert-cli`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) to standard output, e.g. `bert-cli man | man -l -`.
    Man,

    /// Turn a JSON attention dump (from --dump-attention FILE.json) into the self-contained
    /// HTML page, e.g. `bert-cli view attn.json -o attn.html`.
    View(ViewArgs),
}

/// Flags of `bert-cli view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The JSON attention dump.
    #[arg(value_name = "DUMP")]
    pub input: PathBuf,

    /// The page to write. Default: DUMP with its extension changed to .html.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Flags of `bert-cli info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelRefArgs,

    /// Output format: text for people, or one JSON object for scripts.
    #[arg(short, long, value_enum, default_value_t = InfoFormat::Human)]
    pub format: InfoFormat,
}

/// `info --format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InfoFormat {
    /// Aligned text.
    Human,
    /// One JSON object.
    Json,
}

/// Flags of `bert-cli download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub model: ModelRefArgs,

    /// Fetch every file again, whatever the cache holds (to repair a damaged cache).
    #[arg(long)]
    pub force: bool,
}

/// A model named as an argument, for `download` and `info`.
#[derive(Debug, Args)]
pub struct ModelRefArgs {
    /// Hugging Face repo id, or a local folder in Hugging Face layout. Default: as
    /// classify's (BERT_CLI_MODEL, else the default model).
    #[arg(value_name = "MODEL", default_value = DEFAULT_MODEL, env = "BERT_CLI_MODEL")]
    pub model: String,

    #[command(flatten)]
    pub hub: HubArgs,

    /// Print no progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// How to reach the Hugging Face Hub. The cache is `HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_ENDPOINT`
/// selects a mirror and `HF_TOKEN` (or the `huggingface-cli login` token file) a token.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Branch, tag or commit of a hub model.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,

    /// Use only files already in the cache; never touch the network (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// Where the records come from and how they are read (shared by classify, zero-shot and
/// rerank).
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Texts to classify (documents, for rerank). Without any, records are read from
    /// --input or standard input.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Read the input records from FILE ("-" for standard input) instead of arguments.
    #[arg(short, long, value_name = "FILE", conflicts_with = "texts")]
    pub input: Option<PathBuf>,

    /// How the input is split into records. Default: from the --input file's extension
    /// (.jsonl/.ndjson, .csv, .tsv/.tab), else lines.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub input_format: Option<InputFormat>,

    /// The text to classify: a JSONL field (a top-level key, or a JSON pointer such as
    /// /meta/body), or a CSV/TSV column (header name, or number from 1). Default: "text"
    /// (or a file's only column).
    #[arg(long, visible_alias = "column", value_name = "NAME")]
    pub field: Option<String>,

    /// A JSONL field or CSV/TSV column copied into the outputs as the record's id. A JSONL
    /// record without it (or with null) is classified all the same, its id left empty.
    #[arg(long, visible_alias = "id-column", value_name = "NAME")]
    pub id_field: Option<String>,

    /// The CSV/TSV input has no header row: its first row is data, columns are numbers.
    #[arg(long)]
    pub no_header: bool,

    /// The CSV input's field separator, one character, such as ';' (what spreadsheets
    /// write where the decimal mark is a comma). Default: ',' for CSV, tab for TSV.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,

    /// Records end at NUL bytes, not newlines (like xargs -0 and sort -z), so a record may
    /// hold newlines. Plain-lines input only.
    #[arg(short = '0', long)]
    pub null_data: bool,
}

/// How the model runs (shared by classify, zero-shot and rerank).
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub hub: HubArgs,

    /// Where to run: auto picks CUDA, then Metal, when built in and present, else the CPU.
    #[arg(
        short,
        long,
        value_name = "auto|cpu|cuda[:N]|metal",
        default_value = "auto",
        value_parser = DeviceParser,
        hide_possible_values = true
    )]
    pub device: DeviceSpec,

    /// Number format of weights and activations: auto is f32 on the CPU and f16 on a GPU.
    /// Attention softmax and the padding mask stay in f32 whatever is chosen. On the CPU,
    /// bf16 is the fast choice where the CPU has AMX (Intel Xeon from Sapphire Rapids on):
    /// the dense layers multiply in bf16 on its tiles, the rest stays f32, as under
    /// PyTorch's bf16 autocast; labels may differ from f32 on near-ties.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,

    /// int8 weights for the encoder's linear layers, all but the last layer's (CPU only, f32),
    /// calibrated at load on a few built-in sentences (one f32 pass: a fraction of a second
    /// more start-up): faster on CPUs with AVX-512 VNNI; labels may differ from f32 on
    /// near-ties (measured in docs/performance.md).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    pub quantize: QuantizeArg,

    /// Truncate inputs to N tokens, special tokens included (for a pair, both texts
    /// together). Default: the most the model reads (its position table; 512 for BERT and
    /// RoBERTa); larger values are refused.
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,

    /// Inputs per forward pass. Larger batches are faster; smaller ones answer sooner.
    /// Default: 32 on the CPU, 256 on a GPU.
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: Option<u64>,

    /// Most padded tokens per forward pass (inputs x longest input); bounds memory on long
    /// inputs (attention, which grows with length squared, is bounded to match). Inputs are
    /// sorted by length within a window of 32 batches, so little is padding.
    /// Default: 8192 on the CPU, 65536 on a GPU.
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub max_batch_tokens: Option<u64>,

    /// CPU threads for the model. Default: the CPU cores this process may use
    /// (RAYON_NUM_THREADS, if set, is honoured too). More than those cores is capped at
    /// them, with a note: extra threads only contend.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,

    /// Run a checkpoint without a trained classification head (such as plain
    /// bert-base-uncased) with a seeded random head. Its labels mean nothing.
    #[arg(long)]
    pub allow_untrained_head: bool,

    /// Print no warnings or progress bar. (A progress bar is drawn on stderr only when it
    /// is a terminal.)
    #[arg(short, long)]
    pub quiet: bool,
}

/// Where results go (shared by classify, zero-shot and rerank).
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = FormatKind::Human)]
    pub format: FormatKind,

    /// Write the results to FILE instead of standard output. It is created before the
    /// model loads and appears only when complete (an interrupted `> FILE` leaves half a
    /// file; this leaves what was there before).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The JSONL key under which a JSONL input object gets its result (and, on a name
    /// clash, the prefix of the columns added to a CSV/TSV row).
    #[arg(long, value_name = "KEY", default_value = "prediction")]
    pub output_key: String,

    /// Write every model input's tokens and attention probabilities (per layer, per head,
    /// token by token) to FILE: JSON (schema in the README), or with a .html name one
    /// self-contained page that draws them. The file appears only when complete.
    #[arg(long, value_name = "FILE")]
    pub dump_attention: Option<PathBuf>,

    /// Format of --dump-attention. Default: html for .html/.htm names, else json.
    #[arg(long, value_enum, value_name = "FORMAT", requires = "dump_attention")]
    pub attention_format: Option<DumpFormat>,

    /// Keep only these layers (numbered from 0) in the attention dump.
    #[arg(
        long,
        value_name = "L,...",
        value_delimiter = ',',
        requires = "dump_attention"
    )]
    pub attention_layers: Option<Vec<usize>>,

    /// Keep only these heads (numbered from 0) of each kept layer in the attention dump.
    #[arg(
        long,
        value_name = "H,...",
        value_delimiter = ',',
        requires = "dump_attention"
    )]
    pub attention_heads: Option<Vec<usize>>,
}

/// How labels are listed (classify and zero-shot).
#[derive(Debug, Args, Default)]
pub struct RankArgs {
    /// Also print every label's score, in label order (and, in jsonl, the raw logits).
    #[arg(long)]
    pub all_scores: bool,

    /// Also list the K best labels with their scores, best first; 0 or "all" for every label.
    #[arg(long, value_name = "K", value_parser = parse_top_k, allow_negative_numbers = true)]
    pub top_k: Option<usize>,

    /// List every label scoring above T. Default: 0.5 for multi-label (sigmoid) models,
    /// none for others.
    #[arg(long, value_name = "T", value_parser = parse_threshold)]
    pub threshold: Option<f32>,
}

/// Flags of `bert-cli classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// Each input line is a sentence pair: TEXT<TAB>TEXT_PAIR (split at the first tab),
    /// for NLI, paraphrase and other two-text classifiers.
    #[arg(long)]
    pub pair: bool,

    /// The JSONL field or CSV/TSV column holding each record's second text (a pair).
    #[arg(long, visible_alias = "pair-column", value_name = "NAME")]
    pub pair_field: Option<String>,

    /// The second text of a pair, for the TEXT argument(s).
    #[arg(long, value_name = "TEXT", requires = "texts")]
    pub text_pair: Option<String>,

    /// Hugging Face repo id, or a local folder in Hugging Face layout.
    #[arg(short, long, value_name = "ID_OR_DIR", default_value = DEFAULT_MODEL, env = "BERT_CLI_MODEL")]
    pub model: String,

    /// Names for the labels, in index order, when the checkpoint only says LABEL_0, LABEL_1, ...
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,

    /// What to do with a text longer than the model reads: truncate keeps its first
    /// tokens (with a warning); chunk classifies every window of it (see --stride) and
    /// pools their scores (see --aggregate).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = LongTextArg::Truncate)]
    pub long_text: LongTextArg,

    /// With --long-text chunk: tokens each window shares with the one before (the same
    /// windows as transformers' tokenizer with return_overflowing_tokens and stride).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub stride: usize,

    /// With --long-text chunk: how the windows' scores become the text's: mean (of each
    /// label's probability) or max (each label's highest). Default: max for multi-label
    /// (sigmoid) models, else mean.
    #[arg(long, value_enum, value_name = "HOW")]
    pub aggregate: Option<Aggregate>,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub rank: RankArgs,

    /// How logits become scores, as in transformers' pipeline. Default: sigmoid for
    /// multi-label or single-output models, else softmax.
    #[arg(long, value_enum, value_name = "FUNCTION")]
    pub function_to_apply: Option<Scoring>,
}

/// Flags of `bert-cli zero-shot`.
#[derive(Debug, Args)]
pub struct ZeroShotArgs {
    #[command(flatten)]
    pub input: InputArgs,

    /// The candidate labels, comma-separated: each becomes a hypothesis the NLI model
    /// judges against the text.
    #[arg(
        short,
        long,
        value_name = "A,B,...",
        value_delimiter = ',',
        required_unless_present = "label"
    )]
    pub labels: Vec<String>,

    /// One candidate label, taken whole (commas and all); repeat it for more. Adds to
    /// --labels.
    #[arg(long, value_name = "LABEL")]
    pub label: Vec<String>,

    /// The hypothesis each label is put into, at {}.
    #[arg(long, value_name = "TEMPLATE", default_value = "This example is {}.")]
    pub hypothesis_template: String,

    /// Judge each label on its own (entailment against contradiction), so several can be
    /// true; otherwise the labels' scores are a softmax over them and sum to 1.
    #[arg(long)]
    pub multi_label: bool,

    /// An NLI model (its labels must name entailment): Hugging Face repo id or local folder.
    #[arg(short, long, value_name = "ID_OR_DIR", default_value = DEFAULT_ZERO_SHOT_MODEL)]
    pub model: String,

    /// Names for the NLI model's own labels, in index order, when its config only says
    /// LABEL_0, LABEL_1, ... (one must start with "entail").
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub model_labels: Option<Vec<String>>,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub rank: RankArgs,
}

/// Flags of `bert-cli rerank`.
#[derive(Debug, Args)]
pub struct RerankArgs {
    /// The query the documents are scored against.
    #[arg(long, value_name = "TEXT")]
    pub query: String,

    #[command(flatten)]
    pub input: InputArgs,

    /// A cross-encoder: Hugging Face repo id or local folder.
    #[arg(short, long, value_name = "ID_OR_DIR", default_value = DEFAULT_RERANK_MODEL)]
    pub model: String,

    /// Print only the K best documents (0 or "all": every one).
    #[arg(short = 'k', long, value_name = "K", value_parser = parse_top_k, allow_negative_numbers = true)]
    pub top_k: Option<usize>,

    /// Print the model's raw scores (logits). Default: what the model's config says
    /// (sentence-transformers' activation function), else a sigmoid for one-output models.
    #[arg(long)]
    pub raw_scores: bool,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--long-text` values. Not `task::LongText` itself: its `Chunk` carries the window
/// overlap and pooling (`--stride`, `--aggregate`), which a value name cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LongTextArg {
    /// Keep the first tokens the model reads.
    Truncate,
    /// Classify every window and pool the scores.
    Chunk,
}

/// `--top-k`: a count, or 0/"all" for every label (`usize::MAX`, capped at the labels).
fn parse_top_k(s: &str) -> Result<usize, String> {
    match s {
        "all" | "0" => Ok(usize::MAX),
        _ => s
            .parse()
            .map_err(|_| format!("{s:?} is not a count (or \"all\")")),
    }
}

/// A count of at least 1, said in words when it is not (clap's range message for an
/// open range printed u64::MAX).
fn parse_positive(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a count of at least 1")),
    }
}

/// `--device`: parsed by `DeviceSpec`, and offering its names to shell completions
/// (which otherwise completed file names).
#[derive(Clone)]
struct DeviceParser;

impl clap::builder::TypedValueParser for DeviceParser {
    type Value = DeviceSpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DeviceSpec, clap::Error> {
        let text = value
            .to_str()
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        text.parse().map_err(|why: String| {
            let name = arg.map_or_else(|| "--device".into(), |a| a.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value {text:?} for {name}: {why}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["auto", "cpu", "cuda", "metal"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// `--delimiter`: one ASCII character (`\t` written out is a tab).
fn parse_delimiter(s: &str) -> Result<u8, String> {
    match s {
        "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() && s != "\"" && s != "\n" && s != "\r" => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "{s:?} is not a separator: give one ASCII character other than a quote or a line end, such as ';'"
        )),
    }
}

/// `--threshold`: a finite number.
fn parse_threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() => Ok(t),
        _ => Err(format!("{s:?} is not a finite number")),
    }
}

/// `--dtype` values. Not candle's `DType`: a foreign type cannot take clap's trait here,
/// and `auto` is no `DType` (the engine picks one for the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// f32 on the CPU, f16 on a GPU.
    Auto,
    /// 32-bit floats: the reference precision.
    F32,
    /// 16-bit floats (10-bit mantissa): fast on GPUs; slow on the CPU.
    F16,
    /// bfloat16 (8-bit mantissa, f32's range): fast on recent GPUs, and on CPUs with AMX
    /// tiles (dense layers only); on other CPUs bf16-rounded weights with f32 arithmetic,
    /// as fast as f32.
    Bf16,
}

/// `--quantize` values. The engine takes a bool (`EngineOptions::quantize_q8`): there is
/// no domain enum to derive this on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizeArg {
    /// Weights as in the checkpoint (converted to --dtype).
    None,
    /// int8 weights in groups of 64 input channels, activations quantized per group as
    /// the CPU multiplies them (8-bit with AVX-512 VNNI or AMX, 16-bit elsewhere), their scales
    /// balanced by a calibration pass at load; f32 everything else (the last layer
    /// included).
    Q8,
}

/// `--function-to-apply` values: `Scoring` itself, implemented here rather than derived
/// where it is declared (`models/config.rs` describes checkpoints, not flags).
impl ValueEnum for Scoring {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Softmax, Self::Sigmoid, Self::None]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Softmax => {
                PossibleValue::new("softmax").help("Probabilities that sum to 1 across labels")
            }
            Self::Sigmoid => {
                PossibleValue::new("sigmoid").help("An independent probability per label")
            }
            Self::None => PossibleValue::new("none").help("The raw logits"),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
