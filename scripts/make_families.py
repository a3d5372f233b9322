#!/usr/bin/env python3
"""Builds one tiny random checkpoint per supported model family, plus PyTorch reference outputs.

Each fixture has a tokenizer of the family's own kind trained here on the SST-2 train sentences
(WordPiece, byte-level BPE or a SentencePiece Unigram model), converted to tokenizer.json by
transformers itself, and random weights scaled so that predictions vary across inputs. The truth
is `transformers` (eager attention, float32) on the files as committed, reloaded from disk.

  "$(scripts/python-env)" scripts/make_families.py [--train ../shared/data/sst2/train.tsv]
                                                   [--dev ../shared/data/sst2/dev.tsv]
                                                   [--v4 .cache/tf4] [--only NAME ...]

--only builds just the families named (e.g. `--only modernbert bart`) and leaves the other
fixtures and references untouched (deberta-v2 reuses deberta-v3's spm.model, so naming it
rebuilds deberta-v3 too).

Needs torch, transformers, tokenizers, sentencepiece and protobuf (not needed by the tests;
sentencepiece and protobuf only for the SentencePiece families).
--v4 names a `pip install --target` folder holding transformers 4.x; when it exists the
native tokenizer files are also converted by that version (slow and fast classes) as a
cross-check. Deterministic: rerunning it rewrites the same bytes.

Writes, all committed:
  tests/fixtures/families/<name>/          config.json, model.safetensors, tokenizer.json,
                                           tokenizer_config.json and the family's native
                                           tokenizer files (vocab.txt / vocab.json + merges.txt /
                                           sentencepiece.bpe.model / spm.model; none for
                                           ModernBERT, which ships only tokenizer.json)
  tests/fixtures/reference/family-<name>.json
                                           ids + logits for SST-2 dev and edge cases, attention
                                           probabilities for a few inputs, and the result of
                                           rebuilding the tokenizer from the native files.
                                           ModernBERT and BART also: "pairs" (as tasks.json's),
                                           "batch_check" (padded batches against one at a time,
                                           in PyTorch); ModernBERT "cls_pooling" (the same
                                           weights with classifier_pooling "cls"); BART
                                           "zero_shot" (as tasks.json's, from the pipeline) and,
                                           per attention case, its decoder's self- and cross-
                                           attention ("attention" is the encoder's)
"""
import argparse
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from make_reference import ATTENTION_CASES, EDGE_CASES, run, to_list  # noqa: E402

FIXTURES = ROOT / "tests/fixtures/families"
REF = ROOT / "tests/fixtures/reference"

# Only in the families' references: a pad token written literally inside a text (RoBERTa-style
# models give it position padding_idx and do not count it for the positions that follow).
EXTRA_EDGE_CASES = {"specials_literal": "<s> x <pad> y </s> [CLS] [PAD] <mask> [MASK] z"}

# Only in the references of the families added later (ModernBERT, BART): decomposed accents
# (ModernBERT's tokenizer normalizes to NFC; BART's does not normalize).
NEW_EDGE_CASES = {"nfd_accents": "Cafe\u0301 de\u0301ja\u0300 vu, man\u0303ana, A\u030angstro\u0308m"}

# Files a fixture keeps; anything else save_pretrained writes is removed.
KEEP = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json"}

GAIN = 1.6  # Linear weights ~ N(0, (GAIN^2 / fan_in)); default init (std 0.02) gives flat logits


def read_tsv(path):
    with open(path, newline="") as f:
        return [(r["text"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


# ---------------------------------------------------------------------------------------------
# Tokenizers, trained on the SST-2 train sentences


def train_wordpiece(rows, out_dir, vocab_size):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)  # clean_text, chinese chars, accents stripped
    tok.train_from_iterator(rows, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save_model(str(out_dir))
    # The trainer's order of equally frequent tokens changes from run to run (the token set does
    # not); WordPiece ids do not depend on the order, so write a canonical one.
    path = out_dir / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = [t for t in path.read_text(encoding="utf-8").split("\n") if t and t not in specials]
    tokens.sort(key=lambda t: (t.startswith("##"), len(t.removeprefix("##")), t))
    path.write_text("\n".join(specials + tokens) + "\n", encoding="utf-8")
    return ["vocab.txt"]


def train_bytelevel_bpe(rows, out_dir, vocab_size):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(rows, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(out_dir))
    vocab = json.loads((out_dir / "vocab.json").read_text())
    assert [vocab[t] for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]
    return ["vocab.json", "merges.txt"]


def train_bart_bpe(rows, out_dir, vocab_size):
    """Byte-level BPE as RoBERTa's, but with `<mask>` as the last id, as in facebook/bart-*
    (<s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask> 50264)."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(rows, vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.save_model(str(out_dir))
    path = out_dir / "vocab.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    assert [vocab[t] for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    vocab["<mask>"] = len(vocab)
    path.write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    return ["vocab.json", "merges.txt"]


def train_modernbert_bpe(rows, out_dir, vocab_size):
    """A tokenizer.json of the kind answerdotai/ModernBERT-base ships (and nothing else: no
    vocab.json/merges.txt): GPT-NeoX/OLMo-style byte-level BPE (NFC normalizer, ByteLevel
    pre-tokenizer without prefix space, `<|endoftext|>` 0 and `<|padding|>` 1 in the model's
    vocabulary), the BERT-style special tokens added after the merges ([UNK] [CLS] [SEP] [PAD]
    [MASK], in that order, [MASK] stripping the space on its left), and a template
    post-processor: [CLS] A [SEP] and [CLS] A [SEP] B [SEP]. Saved by transformers'
    PreTrainedTokenizerFast, as the Hub's is loaded; only input_ids and attention_mask go to
    the model."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(rows, trainer=trainer)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok.add_special_tokens([AddedToken(t, lstrip=(t == "[MASK]"), rstrip=False, normalized=False, special=True)
                            for t in specials])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert [tok.token_to_id(t) for t in specials] == list(range(cls - 1, cls + 4))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]", clean_up_tokenization_spaces=True,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(str(out_dir))
    return []


def nmt_nfkc_subset(path, texts):
    """Writes a SentencePiece normalization rule TSV: sentencepiece's own nmt_nfkc rules, restricted
    to U+0000-U+303F, U+FE00-U+FFFF and the characters of `texts`. The full nmt_nfkc map costs
    ~240 KB in each .model file and ~320 KB more in each tokenizer.json; this subset is ~13 KB and
    normalizes every one of those characters exactly as nmt_nfkc does (control characters removed,
    odd whitespace to a space, full-width forms folded, ...)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import normalizers

    buf = io.BytesIO()  # a throwaway model, only for its compiled nmt_nfkc map
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts[:2000]), model_writer=buf, vocab_size=200,
                                   hard_vocab_limit=False, model_type="unigram", num_threads=1, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    assert proto.normalizer_spec.name == "nmt_nfkc"
    full = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    points = set(range(0, 0x3040)) | set(range(0xFE00, 0x10000)) | {ord(ch) for t in texts for ch in t}
    lines = []
    for c in sorted(points):
        if 0xD800 <= c < 0xE000:
            continue
        out = full.normalize_str(chr(c))
        if out != chr(c):
            lines.append(f"{c:X}\t{' '.join(f'{ord(x):X}' for x in out)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def train_unigram(rows, path, vocab_size, rules, **ids):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(rows), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, num_threads=1,
                                   normalization_rule_tsv=str(rules), minloglevel=2, **ids)
    # The model records the (temporary) path of the rule file; drop it so reruns give the same bytes.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    proto.normalizer_spec.ClearField("normalization_rule_tsv")
    path.write_bytes(proto.SerializeToString())
    spm.SentencePieceProcessor(model_file=str(path))  # still loads
    return [path.name]


# ---------------------------------------------------------------------------------------------
# Families


def modernbert_hub_config(doc):
    """ModernBERT's config.json as answerdotai/ModernBERT-base (and every fine-tune of it on the
    Hub) writes it: the two rotary thetas as global_rope_theta / local_rope_theta, the layer kinds
    only through global_attn_every_n_layers. transformers 5 saves them as rope_parameters +
    layer_types instead and derives those from the old keys on load (checked on reload)."""
    rope = doc.pop("rope_parameters", None)
    layer_types = doc.pop("layer_types", None)
    if rope is not None:
        doc["global_rope_theta"] = rope["full_attention"]["rope_theta"]
        doc["local_rope_theta"] = rope["sliding_attention"]["rope_theta"]
    if layer_types is not None:
        n = doc["global_attn_every_n_layers"]
        assert layer_types == ["full_attention" if i % n == 0 else "sliding_attention" for i in range(len(layer_types))]
    return {}


def families(tokenizers_dir, rules):
    """name -> how to build it. `tok` names the transformers tokenizer class (v5 names it without
    "Fast"; ELECTRA has no class of its own in v5 and maps to BertTokenizer), `v4` the class names
    (slow, fast) in transformers 4.x, `native` how to train the native files."""
    import transformers as tf

    def id2(names):  # v5 leaves label2id null unless given; checkpoints on the Hub have both
        return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}

    return {
        "distilbert": dict(
            seed=101, tok="DistilBertTokenizer", v4=("DistilBertTokenizer", "DistilBertTokenizerFast"),
            native=lambda rows, d: train_wordpiece(rows, d, 1000), slow_v5="BertTokenizerLegacy",
            model=tf.DistilBertForSequenceClassification,
            config=lambda n, tok: tf.DistilBertConfig(
                vocab_size=n, dim=48, n_layers=2, n_heads=4, hidden_dim=96, max_position_embeddings=128,
                activation="gelu", pad_token_id=tok.pad_token_id, **id2(["NEGATIVE", "POSITIVE"])),
            head="classifier"),
        "roberta": dict(
            seed=102, tok="RobertaTokenizer", v4=("RobertaTokenizer", "RobertaTokenizerFast"),
            native=lambda rows, d: train_bytelevel_bpe(rows, d, 1000), slow_v5=None,
            model=tf.RobertaForSequenceClassification,
            config=lambda n, tok: tf.RobertaConfig(
                vocab_size=n, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                layer_norm_eps=1e-5, problem_type="multi_label_classification",
                **id2(["admiration", "anger", "joy", "sadness", "neutral"])),
            head="classifier.out_proj"),
        "xlm-roberta": dict(
            seed=103, tok="XLMRobertaTokenizer", v4=("XLMRobertaTokenizer", "XLMRobertaTokenizerFast"),
            native=lambda rows, d: train_unigram(rows, d / "sentencepiece.bpe.model", 1000, rules), slow_v5=None,
            model=tf.XLMRobertaForSequenceClassification,
            config=lambda n, tok: tf.XLMRobertaConfig(
                vocab_size=n, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=96,
                max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                layer_norm_eps=1e-5, **id2(["en", "fr", "de", "es"])),
            head="classifier.out_proj"),
        "camembert": dict(
            seed=104, tok="CamembertTokenizer", v4=("CamembertTokenizer", "CamembertTokenizerFast"),
            native=lambda rows, d: train_unigram(rows, d / "sentencepiece.bpe.model", 800, rules), slow_v5=None,
            model=tf.CamembertForSequenceClassification,
            config=lambda n, tok: tf.CamembertConfig(
                vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=66, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, type_vocab_size=1, layer_norm_eps=1e-5,
                **id2(["NEGATIVE", "POSITIVE"])),
            head="classifier.out_proj"),
        "electra": dict(
            seed=105, tok="BertTokenizer", v4=("ElectraTokenizer", "ElectraTokenizerFast"),
            native=lambda rows, d: train_wordpiece(rows, d, 900), slow_v5="BertTokenizerLegacy",
            model=tf.ElectraForSequenceClassification,
            config=lambda n, tok: tf.ElectraConfig(
                vocab_size=n, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=128, hidden_act="gelu",
                **id2(["negative", "neutral", "positive"])),
            head="classifier.out_proj"),
        "deberta-v3": dict(
            seed=106, tok="DebertaV2Tokenizer", v4=("DebertaV2Tokenizer", "DebertaV2TokenizerFast"),
            native=lambda rows, d: train_unigram(
                rows, d / "spm.model", 1000, rules, pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]",
                eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]"),
            slow_v5=None, model=tf.DebertaV2ForSequenceClassification,
            # as microsoft/deberta-v3-*: the embedding matrix is larger than the tokenizer (128100 vs 128001)
            config=lambda n, tok: tf.DebertaV2Config(
                vocab_size=(n + 99) // 100 * 100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=128, relative_attention=True, position_buckets=32,
                max_relative_positions=-1, pos_att_type=["p2c", "c2p"], share_att_key=True,
                norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                pooler_hidden_size=64, pooler_hidden_act="gelu", pooler_dropout=0, hidden_act="gelu",
                pad_token_id=tok.pad_token_id, **id2(["entailment", "neutral", "contradiction"])),
            head="classifier"),
        "deberta-v2": dict(
            seed=107, tok="DebertaV2Tokenizer", v4=("DebertaV2Tokenizer", "DebertaV2TokenizerFast"),
            native=lambda rows, d: _reuse(tokenizers_dir / "deberta-v3", d, ["spm.model"]),
            slow_v5=None, model=tf.DebertaV2ForSequenceClassification,
            config=lambda n, tok: tf.DebertaV2Config(
                vocab_size=n, embedding_size=32, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=96, relative_attention=True, position_buckets=-1,
                max_relative_positions=48, pos_att_type="p2c|c2p", share_att_key=False, norm_rel_ebd="none",
                position_biased_input=True, type_vocab_size=2, conv_kernel_size=0, layer_norm_eps=1e-7,
                pooler_hidden_size=48, pooler_hidden_act="gelu", pooler_dropout=0, hidden_act="gelu",
                pad_token_id=tok.pad_token_id, **id2(["NEGATIVE", "POSITIVE"])),
            head="classifier",
            # Older configs write the string form; transformers splits it on load. Keep the string
            # in the committed config.json so a loader has to handle it.
            config_patch={"pos_att_type": "p2c|c2p"}),
        # As answerdotai/ModernBERT-base, smaller: pre-norm, no biases, rotary positions with a
        # different theta on global and local layers, global attention on layers 0 and 3 (every
        # 3rd) and a sliding window of 16 (8 each side) on the others, GeGLU, mean pooling. The
        # embedding matrix is wider than the tokenizer (rounded up to 64, as 50368 vs 50285).
        "modernbert": dict(
            seed=108, tok="PreTrainedTokenizerFast", v4=None,
            native=lambda rows, d: train_modernbert_bpe(rows, d, 1000), slow_v5=None,
            model=tf.ModernBertForSequenceClassification,
            config=lambda n, tok: tf.ModernBertConfig(
                vocab_size=(n + 63) // 64 * 64, hidden_size=48, intermediate_size=96, num_hidden_layers=5,
                num_attention_heads=4, hidden_activation="gelu", max_position_embeddings=512, norm_eps=1e-5,
                norm_bias=False, attention_bias=False, mlp_bias=False, classifier_bias=False,
                classifier_activation="gelu", classifier_pooling="mean", global_attn_every_n_layers=3,
                local_attention=16, global_rope_theta=160000.0, local_rope_theta=10000.0,
                attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                **id2(["negative", "neutral", "positive"])),
            # The local layers see |i - j| <= 8, so any input over 9 tokens has pairs outside the
            # window: most dev sentences, and the attention case "I didn't really enjoy ..." (21).
            head="classifier", extra_cases=NEW_EDGE_CASES, more_references=True,
            config_patch=modernbert_hub_config,
            # transformers 5 writes "TokenizersBackend", a class 4.x lacks (AutoTokenizer fails there);
            # the Hub's ModernBERT repos name PreTrainedTokenizerFast, which both versions load.
            tokenizer_config_patch={"tokenizer_class": "PreTrainedTokenizerFast"}),
        # As facebook/bart-large-mnli, smaller: an NLI head (contradiction, neutral, entailment)
        # on the last </s> of the decoder, learned positions offset by 2, no embedding scaling.
        "bart": dict(
            seed=109, tok="BartTokenizer", v4=("BartTokenizer", "BartTokenizerFast"),
            native=lambda rows, d: train_bart_bpe(rows, d, 1000), slow_v5=None,
            model=tf.BartForSequenceClassification,
            config=lambda n, tok: tf.BartConfig(
                vocab_size=n, d_model=48, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=128,
                activation_function="gelu", scale_embedding=False, dropout=0.1, attention_dropout=0.0,
                activation_dropout=0.0, classifier_dropout=0.0, init_std=0.02, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                forced_eos_token_id=tok.eos_token_id, is_encoder_decoder=True,
                **id2(["contradiction", "neutral", "entailment"])),
            head="classification_head.out_proj", extra_cases=NEW_EDGE_CASES, more_references=True,
            attentions=lambda out: out.encoder_attentions,
            # Keys bart-large-mnli's config.json still carries from older transformers; they
            # change nothing, and a loader has to accept them.
            config_patch={"normalize_before": False, "add_final_layer_norm": False, "classif_dropout": 0.0,
                          "_num_labels": 3, "output_past": False}),
    }


def _reuse(src, dst, names):
    for n in names:
        shutil.copyfile(src / n, dst / n)
    return names


def usable_positions(cfg):
    if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):
        return cfg.max_position_embeddings - cfg.pad_token_id - 1
    return cfg.max_position_embeddings


# ---------------------------------------------------------------------------------------------
# Weights


def randomize(model):
    """Larger random weights than the default init, and random LayerNorm gamma/beta (so a
    swapped gamma/beta cannot pass). Deterministic given the torch seed."""
    with torch.no_grad():
        for _, m in model.named_modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, GAIN / math.sqrt(m.in_features))
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.randn_like(m.weight) * 0.1 + 1.0)
                if m.bias is not None:  # ModernBERT's norms have none (norm_bias: false)
                    m.bias.copy_(torch.randn_like(m.bias) * 0.1)
            elif len(list(m.parameters(recurse=False))) > 0:
                raise RuntimeError(f"unexpected module with parameters: {type(m).__name__}")


def dev_logits(model, tok, texts, max_length):
    rows = []
    for t in texts:
        _, out = run(model, tok, t, max_length=max_length)
        rows.append(out.logits[0])
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# Native tokenizer check


def compare(ids_ref, ids_other):
    bad = [i for i, (a, b) in enumerate(zip(ids_ref, ids_other)) if a != b]
    return bad


def native_check_v5(name, fam, fixture, native_files, cases, max_length):
    import transformers as tf

    texts = [c["text"] for c in cases]
    ref = [c["ids"] for c in cases]
    result = {"files": native_files}

    def record(key, how, ids, extra=None):
        bad = compare(ref, ids)
        entry = {"how": how, "identical": not bad, "mismatches": len(bad)}
        if bad:
            i = bad[0]
            entry["first_mismatch"] = {"name": cases[i]["name"], "text": texts[i], "expected": ref[i], "got": ids[i]}
        if extra:
            entry.update(extra)
        result[key] = entry
        return entry

    def encode(tok):
        return [tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]

    cls = getattr(tf, fam["tok"])
    with tempfile.TemporaryDirectory() as tmp:
        for n in native_files:
            shutil.copyfile(fixture / n, Path(tmp) / n)
        tok = cls.from_pretrained(tmp)
        e = record("from_native_files", f"{fam['tok']}.from_pretrained(<folder with only {', '.join(native_files)}>)",
                   encode(tok), {"len": len(tok)})
        result["identical"] = e["identical"]
    # The v4 idiom, cls(vocab_file=...), is silently wrong in v5: the vocab_file argument is ignored
    # and the tokenizer has only its default special tokens. Recorded so nobody relies on it.
    kwargs = {"vocab_file": str(fixture / native_files[0])}
    if len(native_files) > 1:
        kwargs["merges_file"] = str(fixture / native_files[1])
    how = f"{fam['tok']}(" + ", ".join(f"{k}=..." for k in kwargs) + ")"
    try:
        tok = cls(**kwargs)
        record("constructor_vocab_file", how, encode(tok), {"len": len(tok)})
    except Exception as e:  # noqa: BLE001
        result["constructor_vocab_file"] = {"how": how, "error": f"{type(e).__name__}: {e}"}
    if fam["slow_v5"]:
        slow = getattr(tf, fam["slow_v5"])(vocab_file=str(fixture / "vocab.txt"), do_lower_case=True)
        record("slow", f"{fam['slow_v5']}(vocab_file=vocab.txt, do_lower_case=True)", encode(slow))
    else:
        result["slow"] = {"how": f"transformers {tf.__version__} has no Python (slow) tokenizer for this family"}
    return result


V4_CHILD = r"""
import json, sys
from pathlib import Path
import transformers as tf
job = json.loads(Path(sys.argv[1]).read_text())
out = {"transformers": tf.__version__, "tokenizers": __import__("tokenizers").__version__, "families": {}}
for fam in job:
    d = Path(fam["fixture"]); L = fam["max_length"]; res = {}
    files = [str(d / n) for n in fam["native_files"]]
    kw = {"do_lower_case": True} if fam["native_files"] == ["vocab.txt"] else {}
    variants = [("slow", fam["slow"]), ("fast", fam["fast"])] if fam["native_files"] else []
    for key, cls_name in variants:
        try:
            tok = getattr(tf, cls_name)(*files, **kw)
            res[key] = {"how": f"{cls_name}({', '.join(fam['native_files'])})", "len": len(tok),
                        "ids": [tok(t, truncation=True, max_length=L)["input_ids"] for t in fam["texts"]]}
        except Exception as e:
            res[key] = {"how": cls_name, "error": f"{type(e).__name__}: {e}"}
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(d))
        res["auto_folder"] = {"how": f"AutoTokenizer.from_pretrained(<fixture folder>) -> {type(tok).__name__}",
                              "len": len(tok),
                              "ids": [tok(t, truncation=True, max_length=L)["input_ids"] for t in fam["texts"]]}
    except Exception as e:
        res["auto_folder"] = {"how": "AutoTokenizer", "error": f"{type(e).__name__}: {e}"}
    out["families"][fam["name"]] = res
print(json.dumps(out))
"""


def native_check_v4(v4_dir, jobs):
    """Runs the same texts through transformers 4.x (slow and fast classes built from the native
    files, and AutoTokenizer on the fixture folder). Returns name -> results, or None."""
    if not v4_dir or not Path(v4_dir).is_dir():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(jobs))
        child = Path(tmp) / "child.py"
        child.write_text(V4_CHILD)
        env = dict(os.environ, PYTHONPATH=str(Path(v4_dir).resolve()), TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, str(child), str(job_path)], capture_output=True, text=True,
                              env=env, cwd=tmp)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("transformers 4.x tokenizer check failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def probs_list(attentions):
    """Per layer, per head, per query row, the post-softmax probabilities of batch row 0."""
    return [[[[float(x) for x in row] for row in head] for head in layer[0].tolist()] for layer in attentions]


def batch_check(model, tok, cases, L, batch=32):
    """Every case again in right-padded batches (of `batch`, in case order), and the harness's
    pick (the first 40 and last 8 cases) in one batch, against the logits run one at a time.
    BART's head refuses a batch whose rows hold different numbers of </s> ("All examples must
    have the same number of <eos> tokens"), so for it each batch is split by that number first.
    Returns the worst difference; fails above 1e-5."""
    eos = model.config.eos_token_id if model.config.model_type == "bart" else None

    def groups(chunk):
        if eos is None:
            return [chunk]
        by = {}
        for c in chunk:
            by.setdefault(c["ids"].count(eos), []).append(c)
        return list(by.values())

    def run_batch(chunk):
        worst = 0.0
        for g in groups(chunk):
            enc = tok([c["text"] for c in g], truncation=True, max_length=L, padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits
            for i, c in enumerate(g):
                n = int(enc["attention_mask"][i].sum())
                assert enc["input_ids"][i, :n].tolist() == c["ids"], c["name"]
                worst = max(worst, float((logits[i] - torch.tensor(c["logits"])).abs().max()))
        return worst

    worst = max(run_batch(cases[i:i + batch]) for i in range(0, len(cases), batch))
    picked = cases[:40] + cases[::-1][:8]
    worst_picked = run_batch(picked)
    assert max(worst, worst_picked) < 1e-5, (worst, worst_picked)
    split = sorted({c["ids"].count(eos) for c in cases}) if eos is not None else None
    return {"how": f"padded batches of {batch} in case order, and the first 40 + last 8 cases as one batch, "
                   "against one at a time" + (", each batch split by its rows' count of </s>" if split else ""),
            "max_abs_diff": worst, "picked_48_max_abs_diff": worst_picked,
            **({"eos_counts": split} if split else {})}


def pair_cases(name, model, tok, dev, L):
    """tokenizer(a, b, truncation=True, max_length=m) (longest_first) and the logits, on the pairs
    scripts/make_tasks_reference.py uses; entries shaped as tasks.json's "pairs"."""
    long_a, long_b = " ".join(dev[20:32]), " ".join(dev[40:46])
    todo = [(dev[i], dev[i + 1], None) for i in range(0, 16, 2)]
    todo += [(long_a, dev[3], 40), (dev[3], long_a, 41), (long_a, long_b, 33), (long_a, long_b, 48),
             (long_a, long_b, None), ("", dev[5], None), ("a b c", "", 9)]
    out = []
    for a, b, m in todo:
        m = min(m or L, L)
        enc = tok(a, b, truncation=True, max_length=m)
        full = tok(a, b)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc["input_ids"]]),
                           attention_mask=torch.tensor([enc["attention_mask"]])).logits
        out.append({"model": name, "text": a, "text_pair": b, "max_length": m, "ids": enc["input_ids"],
                    "type_ids": enc.get("token_type_ids", [0] * len(enc["input_ids"])),
                    "logits": to_list(logits), "truncated": len(full) > len(enc["input_ids"])})
    return out


def cls_pooling_cases(folder, tok, cases, L):
    """The same checkpoint with classifier_pooling "cls" (the config default, and what some
    fine-tunes use) in place of "mean": the first 16 dev sentences and every edge case."""
    import transformers as tf

    patch = {"classifier_pooling": "cls"}
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager",
                                                                  **patch).eval()
    assert model.config.classifier_pooling == "cls"
    out = []
    for c in cases[:16] + [c for c in cases if not c["name"].startswith("dev-")]:
        enc, o = run(model, tok, c["text"], max_length=L)
        assert enc["input_ids"][0].tolist() == c["ids"]
        out.append({"name": c["name"], "text": c["text"], "ids": c["ids"], "logits": to_list(o.logits),
                    "label": int(o.logits.argmax(-1))})
    return {"config_patch": patch, "cases": out}


def zero_shot_cases(folder, dev):
    """transformers' pipeline("zero-shot-classification") on the fixture (an NLI head); entries
    shaped as tasks.json's "zero_shot"."""
    from transformers import pipeline

    zs = pipeline("zero-shot-classification", model=str(folder), tokenizer=str(folder), device="cpu",
                  model_kwargs={"attn_implementation": "eager"})
    texts = dev[50:53] + [" ".join(dev[60:70])]  # the last is cut (only_first) at max_length
    out = []
    for labels, multi in [(["sports", "politics", "tech"], False), (["sports", "politics", "tech"], True),
                          (["a film review"], False)]:
        for template in ["This example is {}.", "The topic is {}"]:
            for t in texts:
                r = zs(t, candidate_labels=labels, multi_label=multi, hypothesis_template=template)
                out.append({"text": t, "labels": labels, "multi_label": multi, "template": template,
                            "ranked": r["labels"], "scores": [float(x) for x in r["scores"]]})
    return out


def build(name, fam, rows, dev, cases_template, staging):
    import transformers as tf

    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    # 1. Native tokenizer files, then transformers' own conversion of them (as a Hub folder with
    #    only the native files is loaded), saved as tokenizer.json + tokenizer_config.json.
    native_dir = staging / name
    native_dir.mkdir()
    native_files = fam["native"](rows, native_dir)
    tok = getattr(tf, fam["tok"]).from_pretrained(str(native_dir))
    torch.manual_seed(fam["seed"])
    cfg = fam["config"](len(tok), tok)
    assert cfg.vocab_size >= len(tok)
    L = usable_positions(cfg)
    tok.model_max_length = L
    tok.save_pretrained(str(out_dir))
    if "tokenizer_config_patch" in fam:
        path = out_dir / "tokenizer_config.json"
        doc = json.loads(path.read_text())
        doc.update(fam["tokenizer_config_patch"])
        path.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    for n in native_files:
        shutil.copyfile(native_dir / n, out_dir / n)

    # 2. Random weights, scaled up. The output layer is then rescaled so the logits vary across
    #    SST-2 dev with a standard deviation of 1, and its bias centred there, so that every label
    #    is predicted for a fair share of inputs: with logits = s * (W h + b - mean), the bias
    #    becomes s * (b - mean) and the weight s * W.
    model = fam["model"](cfg).eval()
    randomize(model)
    tok = tf.AutoTokenizer.from_pretrained(str(out_dir))
    head = model.get_submodule(fam["head"])
    assert head.out_features == cfg.num_labels
    with torch.no_grad():
        logits0 = dev_logits(model, tok, [t for t, _ in dev], L)
        scale = 1.0 / float(logits0.std(0).mean())
        head.weight *= scale
        head.bias.copy_(scale * (head.bias - logits0.mean(0)))
    model.save_pretrained(str(out_dir))
    if "config_patch" in fam:
        path = out_dir / "config.json"
        doc = json.loads(path.read_text())
        patch = fam["config_patch"](doc) if callable(fam["config_patch"]) else fam["config_patch"]
        doc.update(patch)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    for p in out_dir.iterdir():
        if p.name not in KEEP and p.name not in native_files:
            p.unlink()

    # 3. References, from the files as committed.
    model2 = tf.AutoModelForSequenceClassification.from_pretrained(str(out_dir), attn_implementation="eager").eval()
    tok = tf.AutoTokenizer.from_pretrained(str(out_dir))
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys(), (set(sd1) ^ set(sd2))
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), f"{name}: {k} differs after reload"
    for k in ("pos_att_type", "position_buckets", "max_relative_positions", "share_att_key", "norm_rel_ebd",
              "position_biased_input", "embedding_size", "conv_kernel_size"):
        if hasattr(cfg, k):
            assert getattr(model2.config, k) == getattr(cfg, k), (k, getattr(model2.config, k), getattr(cfg, k))

    cases = [dict(c) for c in cases_template]
    cases += [{"name": k, "text": v} for k, v in fam.get("extra_cases", {}).items()]
    for c in cases:
        enc, out = run(model2, tok, c["text"], max_length=L)
        c["ids"] = enc["input_ids"][0].tolist()
        c["logits"] = to_list(out.logits)
        c["label"] = int(out.logits.argmax(-1))
    attention = []
    attentions_of = fam.get("attentions", lambda o: o.attentions)
    for text in ATTENTION_CASES:
        enc, out = run(model2, tok, text, attentions=True, max_length=L)
        entry = {"text": text, "ids": enc["input_ids"][0].tolist(), "attention": probs_list(attentions_of(out))}
        if cfg.is_encoder_decoder:  # "attention" is the encoder's; the decoder's two kinds beside it
            entry["decoder_attention"] = probs_list(out.decoder_attentions)
            entry["cross_attention"] = probs_list(out.cross_attentions)
        attention.append(entry)
    if native_files:
        native = native_check_v5(name, fam, out_dir, native_files, cases, L)
    else:
        native = {"files": [], "identical": None,
                  "how": "tokenizer.json only (no vocab.json/merges.txt), as the family ships on the Hub"}

    dev_cases = [c for c in cases if c["name"].startswith("dev-")]
    logits = torch.tensor([c["logits"] for c in dev_cases])
    hist = Counter(c["label"] for c in dev_cases)
    stats = {
        "params": sum(p.numel() for p in model2.parameters()),
        "size": sum(p.stat().st_size for p in out_dir.iterdir()),
        "hist": [hist.get(i, 0) for i in range(cfg.num_labels)],
        "logits_std": float(logits.std(0).mean()),
        "max_abs": float(logits.abs().max()),
        "frac_abs_gt_20": float((logits.abs() > 20).float().mean()),
        "len_tok": len(tok), "vocab_size": cfg.vocab_size, "L": L,
        "special_ids": {k: getattr(tok, k + "_id") for k in ("cls_token", "sep_token", "pad_token", "unk_token",
                                                              "mask_token", "bos_token", "eos_token")},
        "keys": list(sd2.keys()),
        "files": sorted((p.name, p.stat().st_size) for p in out_dir.iterdir()),
    }
    if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):
        sl = next(c for c in cases if c["name"] == "specials_literal")
        ids = torch.tensor([sl["ids"]])
        pos = model2.roberta.embeddings.create_position_ids_from_input_ids(ids, cfg.pad_token_id)
        stats["specials_positions"] = pos[0].tolist()
    top = max(stats["hist"]) / len(dev_cases)
    assert top <= 0.9, f"{name}: one label predicted for {top:.0%} of dev"
    assert stats["frac_abs_gt_20"] < 0.01, f"{name}: logits saturate"
    doc = {
        "generated_by": "scripts/make_families.py",
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "fixture": name,
        "family": cfg.model_type,
        "max_length": L,
        "native_tokenizer": native,
        "cases": cases,
        "attention": attention,
    }
    if fam.get("more_references"):
        doc["batch_check"] = batch_check(model2, tok, cases, L)
        stats["batch_check"] = doc["batch_check"]
        doc["pairs"] = pair_cases(name, model2, tok, [t for t, _ in dev], L)
        stats["pairs_truncated"] = sum(p["truncated"] for p in doc["pairs"])
        for p in doc["pairs"]:
            del p["truncated"]
        if cfg.model_type == "bart":
            doc["zero_shot"] = zero_shot_cases(out_dir, [t for t, _ in dev])
        lens = [len(c["ids"]) for c in cases]
        if cfg.model_type == "modernbert":
            doc["cls_pooling"] = cls_pooling_cases(out_dir, tok, cases, L)
            # inputs with a pair of tokens outside the local window |i - j| <= local_attention // 2
            stats["longer_than_window"] = sum(n - 1 > cfg.local_attention // 2 for n in lens)
            stats["attention_lengths"] = [len(a["ids"]) for a in attention]
        stats["lengths"] = {"min": min(lens), "max": max(lens), "at_max_length": sum(n == L for n in lens)}
    return doc, stats, native_files, cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--dev", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"))
    ap.add_argument("--v4", default=str(ROOT / ".cache/tf4"),
                    help="pip --target folder with transformers 4.x for a cross-check (skipped if absent)")
    ap.add_argument("--only", nargs="*", help="build only these families")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers as tf

    tf.logging.set_verbosity_error()

    rows = [t for t, _ in read_tsv(args.train)]
    dev = read_tsv(args.dev)
    cases_template = [{"name": f"dev-{i}", "text": t, "gold": y} for i, (t, y) in enumerate(dev)]
    cases_template += [{"name": k, "text": v} for k, v in {**EDGE_CASES, **EXTRA_EDGE_CASES}.items()]

    REF.mkdir(parents=True, exist_ok=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as staging:
        names = list(families(None, None))
        unknown = set(args.only or []) - set(names)
        if unknown:
            raise SystemExit(f"unknown families {sorted(unknown)}; known: {names}")
        # deberta-v2 reuses deberta-v3's spm.model, so it needs deberta-v3 built first
        wanted = [n for n in names if not args.only or n in args.only
                  or (n == "deberta-v3" and "deberta-v2" in args.only)]
        rules = None
        if set(wanted) & {"xlm-roberta", "camembert", "deberta-v3", "deberta-v2"}:  # the SentencePiece ones
            texts = rows + [t for t, _ in dev] + [c["text"] for c in cases_template] + ATTENTION_CASES
            rules = nmt_nfkc_subset(Path(staging) / "nmt_nfkc_subset.tsv", texts)
        fams = families(Path(staging), rules)
        for name, fam in fams.items():
            if name not in wanted:
                continue
            doc, stats, native_files, cases = build(name, fam, rows, dev, cases_template, Path(staging))
            results[name] = (fam, doc, stats, native_files)
            print(f"{name}: built, {len(cases)} cases", flush=True)

    jobs = [{"name": n, "fixture": str(FIXTURES / n), "native_files": nf, "max_length": doc["max_length"],
             "slow": (fam["v4"] or (None, None))[0], "fast": (fam["v4"] or (None, None))[1],
             "texts": [c["text"] for c in doc["cases"]]}
            for n, (fam, doc, stats, nf) in results.items()]
    v4 = native_check_v4(args.v4, jobs)
    for name, (fam, doc, stats, nf) in results.items():
        if v4 is not None:
            ref = [c["ids"] for c in doc["cases"]]
            entry = {"transformers": v4["transformers"], "tokenizers": v4["tokenizers"]}
            for key, r in v4["families"][name].items():
                if "error" in r:
                    entry[key] = r
                    continue
                bad = compare(ref, r["ids"])
                e = {"how": r["how"], "len": r["len"], "identical": not bad, "mismatches": len(bad)}
                if bad:
                    i = bad[0]
                    e["first_mismatch"] = {"name": doc["cases"][i]["name"], "text": doc["cases"][i]["text"],
                                           "expected": ref[i], "got": r["ids"][i]}
                    e["mismatched_cases"] = [doc["cases"][i]["name"] for i in bad][:20]
                entry[key] = e
            doc["native_tokenizer"]["transformers_v4"] = entry
        (REF / f"family-{name}.json").write_text(json.dumps(doc))

    print()
    try:
        spm_version = __import__("sentencepiece").__version__
    except ImportError:
        spm_version = "(not installed)"
    print(f"torch {torch.__version__}, transformers {tf.__version__}, tokenizers {__import__('tokenizers').__version__},"
          f" sentencepiece {spm_version}")
    print(f"{'fixture':<12} {'params':>7} {'size':>8} {'L':>4} {'len(tok)':>8} {'vocab':>6} "
          f"{'dev label histogram':<26} {'logit std':>9} {'max|l|':>7}")
    for name, (fam, doc, s, nf) in results.items():
        print(f"{name:<12} {s['params']:>7} {s['size']:>8} {s['L']:>4} {s['len_tok']:>8} {s['vocab_size']:>6} "
              f"{str(s['hist']):<26} {s['logits_std']:>9.3f} {s['max_abs']:>7.2f}")
    print()
    for name, (fam, doc, s, nf) in results.items():
        print(f"== {name}: special ids {s['special_ids']}")
        print(f"   files {s['files']}")
        print(f"   tensors {s['keys']}")
        nt = doc["native_tokenizer"]
        for key, e in nt.items():
            if isinstance(e, dict) and key != "transformers_v4":
                print(f"   native {key}: {json.dumps(e, ensure_ascii=False)[:600]}")
        for key, e in nt.get("transformers_v4", {}).items():
            print(f"   v4 {key}: {json.dumps(e, ensure_ascii=False)[:600]}")
        sl = next(c for c in doc["cases"] if c["name"] == "specials_literal")
        print(f"   specials_literal ids {sl['ids']}")
        if "specials_positions" in s:
            print(f"   specials_literal position ids {s['specials_positions']}")
        for key in ("batch_check", "pairs_truncated", "longer_than_window", "attention_lengths", "lengths"):
            if key in s:
                print(f"   {key}: {s[key]}")


if __name__ == "__main__":
    main()
