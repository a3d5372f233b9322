//! Text to token ids: `tokenizer.json` when the checkpoint has one, else the family's
//! tokenizer rebuilt from its own files the way `transformers` converts them: WordPiece
//! from `vocab.txt` (BERT, DistilBERT, ELECTRA), byte-level BPE from `vocab.json` and
//! `merges.txt` (RoBERTa).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer, TruncationParams, TruncationStrategy};

/// One tokenized input, truncated to the model's limit.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, `[CLS]` first and `[SEP]` last.
    pub ids: Vec<u32>,
    /// Segment ids (all 0 for a single text).
    pub type_ids: Vec<u32>,
    /// The tokens as strings, for people reading an attention dump.
    pub tokens: Vec<String>,
    /// Character (not byte) offsets of each token in the text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Whether the text had more tokens than the model reads, and was cut.
    pub truncated: bool,
}

/// Where the tokenizer comes from.
pub enum TokenizerFiles<'a> {
    /// A `tokenizer.json` (fast tokenizer).
    Json(&'a Path),
    /// `vocab.txt`, with `tokenizer_config.json` when present (for `do_lower_case`).
    Vocab {
        /// The WordPiece vocabulary, one token per line.
        vocab: &'a Path,
        /// Optional `tokenizer_config.json`.
        config: Option<&'a Path>,
    },
    /// Byte-level BPE, with `tokenizer_config.json` when present (for
    /// `add_prefix_space`).
    Bpe {
        /// `vocab.json`: token to id.
        vocab: &'a Path,
        /// `merges.txt`: the merge rules, in order.
        merges: &'a Path,
        /// Optional `tokenizer_config.json`.
        config: Option<&'a Path>,
    },
}

/// A tokenizer that truncates to a fixed length and never pads (batches pad themselves).
pub struct TextTokenizer {
    inner: Tokenizer,
    vocab_size: usize,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    do_lower_case: Option<bool>,
    strip_accents: Option<bool>,
    tokenize_chinese_chars: Option<bool>,
    add_prefix_space: Option<bool>,
}

impl TokenizerConfig {
    fn read(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("invalid tokenizer config {}", p.display()))
            }
            None => Ok(Self::default()),
        }
    }
}

impl TextTokenizer {
    /// Loads the tokenizer; `max_length` counts `[CLS]` and `[SEP]`; ids must stay below
    /// `vocab_size` (the model's embedding rows).
    pub fn load(files: TokenizerFiles, max_length: usize, vocab_size: usize) -> Result<Self> {
        let mut inner = match files {
            TokenizerFiles::Json(path) => Tokenizer::from_file(path)
                .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?,
            TokenizerFiles::Vocab { vocab, config } => from_vocab(vocab, config)?,
            TokenizerFiles::Bpe {
                vocab,
                merges,
                config,
            } => from_bpe(vocab, merges, config)?,
        };
        if max_length < 2 {
            bail!("--max-length must be at least 2 ([CLS] and [SEP]), got {max_length}");
        }
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("cannot set truncation to {max_length}: {e}"))?;
        inner.with_padding(None);
        Ok(Self { inner, vocab_size })
    }

    /// Tokenizes one text; an id outside the model's vocabulary is an error, not a crash.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_char_offsets(text, true)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        if let Some((i, id)) = enc
            .get_ids()
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.vocab_size)
        {
            bail!(
                "token {:?} has id {id}, outside the model's vocabulary of {} (tokenizer and weights do not match)",
                enc.get_tokens()[i],
                self.vocab_size
            );
        }
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            tokens: enc.get_tokens().to_vec(),
            offsets: enc.get_offsets().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}

/// Rebuilds BERT's tokenizer from `vocab.txt`, as `BertTokenizerFast` would.
fn from_vocab(vocab: &Path, config: Option<&Path>) -> Result<Tokenizer> {
    let cfg = TokenizerConfig::read(config)?;
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| anyhow!("vocab path {} is not UTF-8", vocab.display()))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| anyhow!("cannot read vocabulary {}: {e}", vocab.display()))?;
    let id = |tok: &str| {
        tokenizers::Model::token_to_id(&model, tok)
            .ok_or_else(|| anyhow!("vocabulary {} has no {tok} token", vocab.display()))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let lowercase = cfg.do_lower_case.unwrap_or(true);
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        cfg.tokenize_chinese_chars.unwrap_or(true),
        cfg.strip_accents,
        lowercase,
    )))
    .map_err(|e| anyhow!("cannot set up the normalizer: {e}"))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| anyhow!("cannot register special tokens: {e}"))?;
    Ok(tok)
}

/// Rebuilds RoBERTa's tokenizer from `vocab.json` and `merges.txt`, as
/// `RobertaTokenizerFast` converts them: byte-level pre-tokenizer and decoder, `<s> ...
/// </s>` around each text, `<mask>` taking the space before it.
fn from_bpe(vocab: &Path, merges: &Path, config: Option<&Path>) -> Result<Tokenizer> {
    let cfg = TokenizerConfig::read(config)?;
    let utf8 = |p: &Path| {
        p.to_str()
            .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
            .map(str::to_string)
    };
    let model = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
        .build()
        .map_err(|e| {
            anyhow!(
                "cannot read the BPE vocabulary {} with merges {}: {e}",
                vocab.display(),
                merges.display()
            )
        })?;
    let id = |tok: &str| {
        tokenizers::Model::token_to_id(&model, tok)
            .ok_or_else(|| anyhow!("vocabulary {} has no {tok} token", vocab.display()))
    };
    let (cls, sep) = (id("<s>")?, id("</s>")?);
    let prefix_space = cfg.add_prefix_space.unwrap_or(false);
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(ByteLevel::new(prefix_space, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(
        RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls))
            .trim_offsets(true)
            .add_prefix_space(prefix_space),
    ));
    let specials: Vec<AddedToken> = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|&t| AddedToken::from(t, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| anyhow!("cannot register special tokens: {e}"))?;
    Ok(tok)
}
