//! Command-line flags, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceSpec;
use crate::models::DEFAULT_MODEL;

/// Classify text with a BERT-family model (BERT, DistilBERT, RoBERTa, XLM-R, CamemBERT,
/// ELECTRA, DeBERTa-v2/v3), on CUDA, Metal or CPU.
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
    /// Classify each TEXT argument, or each line of standard input when none is given.
    ///
    /// Results come in input order, one per input, as soon as they are ready.
    ///
    /// Exit status: 0 when every input was classified, 1 when there was no input, 2 on an
    /// error. An input that cannot be classified (say, a line that is not UTF-8) gets an
    /// error row in its place, a warning on stderr and exit status 2; the others are kept.
    Classify(ClassifyArgs),

    /// Fetch everything MODEL needs into the Hugging Face cache, for later offline runs.
    Download(ModelRefArgs),

    /// Show MODEL's architecture, labels and files (fetching them if needed).
    Info(ModelRefArgs),
}

/// A model named as an argument, for `download` and `info`.
#[derive(Debug, Args)]
pub struct ModelRefArgs {
    /// Hugging Face repo id, or a local folder in Hugging Face layout.
    #[arg(value_name = "MODEL", default_value = DEFAULT_MODEL)]
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

/// Flags of `bert-cli classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Texts to classify. Without any, lines are read from --input or standard input.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Read one input per line from FILE ("-" for standard input) instead of arguments.
    #[arg(short, long, value_name = "FILE", conflicts_with = "texts")]
    pub input: Option<PathBuf>,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Where to run: auto picks CUDA, then Metal, when built in and present, else the CPU.
    #[arg(
        short,
        long,
        value_name = "auto|cpu|cuda[:N]|metal",
        default_value = "auto"
    )]
    pub device: DeviceSpec,

    /// Number format of weights and activations: auto is f32 on the CPU and f16 on a GPU.
    /// Attention softmax and the padding mask stay in f32 whatever is chosen.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,

    /// int8 weights for the encoder's linear layers, all but the last layer's (CPU only, f32):
    /// faster on CPUs with AVX-512 VNNI; labels may differ from f32 on near-ties (see the
    /// README's performance section).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    pub quantize: QuantizeArg,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = FormatArg::Human)]
    pub format: FormatArg,

    /// Also print every label's probability (and, in jsonl, the raw logits).
    #[arg(long)]
    pub all_scores: bool,

    /// Truncate inputs to N tokens, [CLS] and [SEP] included. Default: the most the model
    /// reads (its position table; 512 for BERT and RoBERTa); larger values are refused.
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_tokens: Option<u64>,

    /// CPU threads for the model. Default: the CPU cores this process may use
    /// (RAYON_NUM_THREADS, if set, is honoured too).
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,

    /// Write every input's tokens and attention probabilities (per layer, per head,
    /// token by token) to FILE as JSON; see the README for the schema.
    #[arg(long, value_name = "FILE")]
    pub dump_attention: Option<PathBuf>,

    /// Print no warnings or progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Which model, and how to read its head.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face repo id, or a local folder in Hugging Face layout.
    #[arg(short, long, value_name = "ID_OR_DIR", default_value = DEFAULT_MODEL, env = "BERT_CLI_MODEL")]
    pub model: String,

    #[command(flatten)]
    pub hub: HubArgs,

    /// Names for the labels, in index order, when the checkpoint only says LABEL_0, LABEL_1, ...
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,

    /// Run a checkpoint without a trained classification head (such as plain
    /// bert-base-uncased) with a seeded random head. Its labels mean nothing.
    #[arg(long)]
    pub allow_untrained_head: bool,
}

/// `--dtype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// f32 on the CPU, f16 on a GPU.
    Auto,
    /// 32-bit floats: the reference precision.
    F32,
    /// 16-bit floats (10-bit mantissa): fast on GPUs; slow on the CPU.
    F16,
    /// bfloat16 (8-bit mantissa, f32's range): fast on recent GPUs; slow on the CPU.
    Bf16,
}

/// `--quantize` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuantizeArg {
    /// Weights as in the checkpoint (converted to --dtype).
    None,
    /// int8 weights and activations in groups of 64 input channels, f32 everything else
    /// (the last layer included).
    Q8,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Aligned columns: label, score, text.
    Human,
    /// One JSON object per input: line, text, label, score (+ scores, logits).
    Jsonl,
    /// Tab-separated: line, label, score, (+ a score per label), text.
    Tsv,
}
