//! Text to token ids: `tokenizer.json` when the checkpoint has one, else the family's
//! tokenizer rebuilt from its own files the way `transformers` converts them: WordPiece
//! from `vocab.txt` (BERT, DistilBERT, ELECTRA), byte-level BPE from `vocab.json` and
//! `merges.txt` (RoBERTa).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::utils::truncation::{truncate_encodings, TruncationDirection};
use tokenizers::{
    AddedToken, Encoding, PostProcessor, PostProcessorWrapper, Tokenizer, TruncationParams,
    TruncationStrategy,
};

/// One tokenized input (a text, a pair of texts, or one window of a long text), as the
/// model reads it.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    /// Token ids, the family's special tokens included (`[CLS] ... [SEP]`, `<s> ... </s>`).
    pub ids: Vec<u32>,
    /// Segment ids (1 on the second text of a BERT-style pair, else 0).
    pub type_ids: Vec<u32>,
    /// The tokens as strings, for people reading an attention dump.
    pub tokens: Vec<String>,
    /// Character (not byte) offsets of each token in its text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Whether the input had more tokens than the model reads, and was cut.
    pub truncated: bool,
    /// Index of the second text's first token, for a pair (bertviz's `sentence_b_start`).
    pub pair_start: Option<usize>,
}

/// How a pair too long for the model is cut, as transformers names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairTruncation {
    /// A token at a time from the longer text (transformers' default, `truncation=True`).
    LongestFirst,
    /// From the first text only (the zero-shot pipeline, so the hypothesis stays whole).
    OnlyFirst,
}

/// Texts longer than this many bytes are tokenized a piece at a time, cut at a single
/// space between two words, where every supported pre-tokenizer splits anyway: memory then
/// follows the piece, not the text, and a truncated text is only read as far as needed.
pub const PIECE_BYTES: usize = 64 * 1024;

/// Where the tokenizer comes from: `tokenizer.json`, or the family's own files it can be
/// rebuilt from (as the hub finds them).
#[derive(Debug, Clone)]
pub enum TokenizerFiles {
    /// A `tokenizer.json` (fast tokenizer).
    Json(PathBuf),
    /// `vocab.txt`, with `tokenizer_config.json` when present (for `do_lower_case`).
    Vocab {
        /// The WordPiece vocabulary, one token per line.
        vocab: PathBuf,
        /// Optional `tokenizer_config.json`.
        config: Option<PathBuf>,
    },
    /// RoBERTa's byte-level BPE, with `tokenizer_config.json` when present (for
    /// `add_prefix_space`).
    Bpe {
        /// `vocab.json`: token to id.
        vocab: PathBuf,
        /// `merges.txt`: the merge rules, in order.
        merges: PathBuf,
        /// Optional `tokenizer_config.json`.
        config: Option<PathBuf>,
    },
}

impl TokenizerFiles {
    /// The files, in the order they are read.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Self::Json(p) => vec![p],
            Self::Vocab { vocab, config } => std::iter::once(vocab.as_path())
                .chain(config.as_deref())
                .collect(),
            Self::Bpe {
                vocab,
                merges,
                config,
            } => [vocab.as_path(), merges.as_path()]
                .into_iter()
                .chain(config.as_deref())
                .collect(),
        }
    }
}

/// A tokenizer that truncates to a fixed length and never pads (batches pad themselves).
pub struct TextTokenizer {
    /// Without truncation, padding or post-processor: truncation is done here, per call,
    /// as the caller's job needs (one text, a pair, or overlapping windows), and the
    /// post-processor runs once, on what is kept (RoBERTa's trims offsets, so running it
    /// on each piece and again at the end would trim twice).
    inner: Tokenizer,
    /// The family's special tokens (and offset trimming), taken out of `inner`.
    post: Option<PostProcessorWrapper>,
    vocab_size: usize,
    max_length: usize,
    piece_bytes: usize,
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
    pub fn load(files: &TokenizerFiles, max_length: usize, vocab_size: usize) -> Result<Self> {
        let mut inner = match files {
            TokenizerFiles::Json(path) => tokenizer_json(path)?,
            TokenizerFiles::Vocab { vocab, config } => from_vocab(vocab, config.as_deref())?,
            TokenizerFiles::Bpe {
                vocab,
                merges,
                config,
            } => from_bpe(vocab, merges, config.as_deref())?,
        };
        if max_length < 2 {
            bail!("--max-length must be at least 2 ([CLS] and [SEP]), got {max_length}");
        }
        // A tokenizer that can produce ids past the embedding table is refused here, before
        // any input is read, not on the first text that reaches such an id.
        if let Some((token, id)) = inner
            .get_vocab(true)
            .into_iter()
            .max_by_key(|(_, id)| *id)
            .filter(|(_, id)| *id as usize >= vocab_size)
        {
            bail!(
                "the tokenizer ({}) has ids up to {id} ({token:?}) but the model's embedding table has \
                 {vocab_size} rows (config.json vocab_size): tokenizer and weights do not match; \
                 use the tokenizer files that came with the model",
                files.files()[0].display()
            );
        }
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("cannot turn off the tokenizer's own truncation: {e}"))?;
        inner.with_padding(None);
        let post = inner.get_post_processor().cloned();
        inner.with_post_processor(None::<PostProcessorWrapper>);
        let this = Self {
            post,
            inner,
            vocab_size,
            max_length,
            piece_bytes: PIECE_BYTES,
        };
        // A single text needs room past its own special tokens; a pair's (one more) is
        // checked when a pair is encoded, so `--max-length 3` works for single texts.
        if max_length <= this.added(false) {
            bail!(
                "--max-length {max_length} leaves no room for text: a single text takes {} special tokens",
                this.added(false)
            );
        }
        Ok(this)
    }

    /// The same tokenizer cutting long texts into pieces of about `bytes` (tests use tiny
    /// pieces to prove that pieces give the same tokens as the whole text).
    pub fn with_piece_bytes(mut self, bytes: usize) -> Self {
        self.piece_bytes = bytes.max(1);
        self
    }

    /// Special tokens the family adds around one text, or around a pair.
    fn added(&self, pair: bool) -> usize {
        self.post.as_ref().map_or(0, |p| p.added_tokens(pair))
    }

    /// Content tokens of one window: the length less the special tokens.
    pub fn window_tokens(&self) -> usize {
        self.max_length - self.added(false)
    }

    /// Tokenizes one text, cut to the model's length (`longest_first`, as transformers).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let room = self.window_tokens();
        let (content, complete) = self.content(text, Some(room))?;
        let (enc, _) = truncate(content, None, room, PairTruncation::LongestFirst)?;
        self.finish(enc, None, !complete)
    }

    /// Tokenizes a pair as the family's template joins them (`[CLS] a [SEP] b [SEP]` with
    /// token types for BERT, `<s> a </s></s> b </s>` for RoBERTa), cut to the model's
    /// length by `strategy`.
    /// An empty second text is no second text, as transformers takes it.
    pub fn encode_pair(&self, a: &str, b: &str, strategy: PairTruncation) -> Result<Encoded> {
        if b.is_empty() {
            return self.encode(a);
        }
        let Some(room) = self
            .max_length
            .checked_sub(self.added(true))
            .filter(|&r| r > 0)
        else {
            bail!(
                "--max-length {} leaves no room for a pair: its special tokens take {}",
                self.max_length,
                self.added(true)
            );
        };
        // Neither text can keep more than `room` tokens, so neither is read further, except
        // that `longest_first` gives an odd last token to the longer text: when both are
        // over, which one is longer is found by counting both texts' tokens a piece at a
        // time, holding none (a 50 MB pair took 1.9 GB when both were tokenized whole).
        let (mut first, complete_a) = self.content(a, Some(room))?;
        let (mut second, complete_b) = match strategy {
            PairTruncation::LongestFirst => self.content(b, Some(room))?,
            PairTruncation::OnlyFirst => self.content(b, None)?,
        };
        if !complete_a && !complete_b {
            // Both hold more than `room` tokens; cut to lengths that order them as the whole
            // texts are ordered, `truncate` then splits `room` between them as it would.
            let (na, nb) = (self.count(a)?, self.count(b)?);
            let (ka, kb) = match na.cmp(&nb) {
                std::cmp::Ordering::Greater => (room + 1, room),
                std::cmp::Ordering::Equal => (room, room),
                std::cmp::Ordering::Less => (room, room + 1),
            };
            first.truncate(ka, 0, TruncationDirection::Right);
            second.truncate(kb, 0, TruncationDirection::Right);
        }
        let (first, second) = truncate(first, Some(second), room, strategy)?;
        self.finish(first, second, !(complete_a && complete_b))
    }

    /// How many tokens (no special tokens) `text` makes, tokenized a piece at a time and
    /// none of them kept.
    fn count(&self, text: &str) -> Result<usize> {
        let mut n = 0;
        self.for_each_piece(text, &mut |enc: Encoding| {
            n += enc.len();
            true
        })?;
        Ok(n)
    }

    /// Every window of a long text, as transformers' tokenizer returns them with
    /// `return_overflowing_tokens=True, stride=stride`: windows of the model's length
    /// whose content overlaps the previous one's by `stride` tokens; one window for a text
    /// that fits.
    pub fn windows(&self, text: &str, stride: usize, keep_tokens: bool) -> Result<Vec<Encoded>> {
        let room = self.window_tokens();
        if stride >= room {
            bail!(
                "--stride {stride} must be less than the {room} text tokens of a window (--max-length {} less {} special tokens)",
                self.max_length,
                self.added(false)
            );
        }
        // Ids only (tokens and offsets only for an attention dump), a piece at a time, so a
        // document of millions of tokens costs a few bytes per token, not an `Encoding`.
        let mut ids: Vec<u32> = Vec::new();
        let mut tokens: Vec<String> = Vec::new();
        let mut offsets: Vec<(usize, usize)> = Vec::new();
        self.for_each_piece(text, &mut |enc: Encoding| {
            ids.extend_from_slice(enc.get_ids());
            if keep_tokens {
                tokens.extend_from_slice(enc.get_tokens());
                offsets.extend_from_slice(enc.get_offsets());
            }
            true
        })?;
        // The windows `Encoding::truncate` cuts (the tokenizer's overflowing tokens): starts
        // every `room - stride` tokens, until one reaches the end.
        let step = room - stride;
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + room).min(ids.len());
            let n = end - start;
            let enc = Encoding::new(
                ids[start..end].to_vec(),
                vec![0; n],
                if keep_tokens {
                    tokens[start..end].to_vec()
                } else {
                    vec![String::new(); n]
                },
                vec![None; n],
                if keep_tokens {
                    offsets[start..end].to_vec()
                } else {
                    vec![(0, 0); n]
                },
                vec![0; n],
                vec![1; n],
                Vec::new(),
                Default::default(),
            );
            let mut e = self.finish(enc, None, false)?;
            if !keep_tokens {
                e.tokens = Vec::new();
                e.offsets = Vec::new();
            }
            windows.push(e);
            if end >= ids.len() {
                break;
            }
            start += step;
        }
        Ok(windows)
    }

    /// Calls `each` with the tokens (no special tokens) of each piece of `text` in turn,
    /// offsets counted from the start of `text`, until it returns false.
    fn for_each_piece(&self, text: &str, each: &mut dyn FnMut(Encoding) -> bool) -> Result<()> {
        let raw = |s: &str| {
            self.inner
                .encode_char_offsets(s, false)
                .map_err(|e| anyhow!("tokenizer failed: {e}"))
        };
        let (mut start, mut chars) = (0, 0);
        while start < text.len() {
            let end = piece_end(text, start, self.piece_bytes);
            let piece = &text[start..end];
            let mut enc = raw(piece)?;
            if chars > 0 {
                for o in enc.get_offsets_mut() {
                    *o = (o.0 + chars, o.1 + chars);
                }
            }
            chars += piece.chars().count();
            start = end;
            if !each(enc) {
                break;
            }
        }
        Ok(())
    }

    /// A text's tokens without special tokens. With `need`, stops once more than `need`
    /// tokens are certain; the flag says whether the whole text was read.
    fn content(&self, text: &str, need: Option<usize>) -> Result<(Encoding, bool)> {
        let mut all = Encoding::default();
        let mut complete = true;
        self.for_each_piece(text, &mut |enc: Encoding| {
            all.merge_with(enc, false);
            let more = need.is_none_or(|n| all.len() <= n);
            complete = more;
            more
        })?;
        // (Stopping after the last piece says incomplete too: the text is over the limit
        // either way, so it is cut either way.)
        Ok((all, complete))
    }

    /// Adds the special tokens and checks every id against the model's vocabulary (an id
    /// outside it is an error, not a crash).
    fn finish(&self, first: Encoding, second: Option<Encoding>, cut: bool) -> Result<Encoded> {
        let truncated = cut
            || !first.get_overflowing().is_empty()
            || second
                .as_ref()
                .is_some_and(|s| !s.get_overflowing().is_empty());
        let pair = second.is_some();
        let (first, second) = (strip(first), second.map(strip));
        let enc = match &self.post {
            Some(p) => p.process(first, second, true),
            // No post-processor: the crate's default joining of the two.
            None => self.inner.post_process(first, second, true),
        }
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
        let pair_start = pair
            .then(|| enc.get_sequence_ids().iter().position(|s| *s == Some(1)))
            .flatten();
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            tokens: enc.get_tokens().to_vec(),
            offsets: enc.get_offsets().to_vec(),
            truncated,
            pair_start,
        })
    }
}

/// Drops what truncation cut off (the tokens, not the fact).
fn strip(mut e: Encoding) -> Encoding {
    e.take_overflowing();
    e
}

/// Cuts one text or a pair to `room` content tokens, as the tokenizers crate does for
/// transformers.
fn truncate(
    first: Encoding,
    second: Option<Encoding>,
    room: usize,
    strategy: PairTruncation,
) -> Result<(Encoding, Option<Encoding>)> {
    let params = TruncationParams {
        max_length: room,
        strategy: match strategy {
            PairTruncation::LongestFirst => TruncationStrategy::LongestFirst,
            PairTruncation::OnlyFirst => TruncationStrategy::OnlyFirst,
        },
        stride: 0,
        ..Default::default()
    };
    truncate_encodings(first, second, &params).map_err(|e| {
        if strategy == PairTruncation::OnlyFirst {
            anyhow!("the second text alone is longer than the model reads ({room} tokens with the first), so the first cannot be cut to fit: {e}")
        } else {
            anyhow!("cannot truncate: {e}")
        }
    })
}

/// Where a piece of a long text starting at `start` ends: at the first single space between
/// two non-space characters at least `bytes` on, else at the end of the text. Every
/// supported pre-tokenizer splits there (WordPiece and Metaspace at the space, byte-level
/// BPE just before it, keeping it with the next word) and no normalizer looks across it.
fn piece_end(text: &str, start: usize, bytes: usize) -> usize {
    let b = text.as_bytes();
    let mut i = start + bytes;
    while i + 1 < b.len() {
        if b[i] == b' '
            && !(b[i - 1] as char).is_ascii_whitespace()
            && !(b[i + 1] as char).is_ascii_whitespace()
            && !is_unicode_space_before(text, i)
            && !is_unicode_space_at(text, i + 1)
        {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Whether the character ending at byte `i` is whitespace (`i` is a char boundary).
fn is_unicode_space_before(text: &str, i: usize) -> bool {
    text[..i]
        .chars()
        .next_back()
        .is_some_and(char::is_whitespace)
}

/// Whether the character starting at byte `i` is whitespace (`i` is a char boundary).
fn is_unicode_space_at(text: &str, i: usize) -> bool {
    text[i..].chars().next().is_some_and(char::is_whitespace)
}

/// Reads a `tokenizer.json`. The tokenizers crate panics (`expect`) on some malformed
/// files instead of returning an error (a broken `decoder` entry, found by fuzzing), so
/// the panic is caught, kept off stderr, and reported as the file's error.
fn tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let loaded = std::panic::catch_unwind(|| Tokenizer::from_file(path));
    std::panic::set_hook(quiet);
    match loaded {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => bail!("cannot load tokenizer {}: {e}", path.display()),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!(
                "cannot load tokenizer {}: the file is malformed ({why})",
                path.display()
            )
        }
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
