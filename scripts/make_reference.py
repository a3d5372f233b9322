#!/usr/bin/env python3
"""Generates the PyTorch reference outputs the Rust tests compare against.

The truth is `transformers` (eager attention, float32) on the same weights. Run after
scripts/fetch-fixture; needs torch + transformers (not needed by the tests themselves):

  python scripts/make_reference.py [--dev ../shared/data/sst2/dev.tsv]

Writes, all committed:
  tests/fixtures/reference/minilm-sst2.json   ids + logits for SST-2 dev and edge cases,
                                               attention probabilities for a few inputs
  tests/fixtures/tiny-bin/                     a tiny random checkpoint as pytorch_model.bin
                                               with vocab.txt only, gelu_new, 3 sigmoid labels
  tests/fixtures/tiny-legacy/                  a tiny random checkpoint without the "bert."
                                               prefix, LayerNorm gamma/beta, relu, 1 label
  tests/fixtures/reference/tiny-*.json         their reference outputs
"""
import argparse
import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / "tests/fixtures/reference"

EDGE_CASES = {
    "empty": "",
    "whitespace": "   \t  ",
    "accents": "Café déjà vu: a naïve façade, Ångström and Øresund",
    "cjk": "日本語のテキストはどうですか 中文测试 한국어",
    "emoji": "I love it 😀🎉👍🏽 so much",
    "control": "control\u0007chars\u0000here\u001b[31m and \u200bzero width",
    "sep_literal": "this is [SEP] not the end [CLS] [PAD] [MASK]",
    "long_word": "a" * 300 + " supercalifragilisticexpialidocious",
    "arabic": "هذا الفيلم رائع جدا",
    "mixed_case": "THE Movie Was GREAT!!!",
    "truncated_3000_words": " ".join(["the movie was wonderful and the acting was terrible"] * 300),
}
ATTENTION_CASES = ["the cat jumped", "I didn't really enjoy this movie. It was fantastic!", "", "Café 😀 [SEP] x"]


def run(model, tok, text, attentions=False, max_length=512):
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=attentions)
    return enc, out


def to_list(t):
    return [float(x) for x in t.flatten().tolist()]


def minilm(dev_path):
    fixture = ROOT / ".cache/fixtures/minilm-sst2"
    tok = BertTokenizerFast.from_pretrained(fixture)
    model = BertForSequenceClassification.from_pretrained(fixture, attn_implementation="eager").eval()
    with open(dev_path, newline="") as f:
        dev = [(r["text"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    cases = [{"name": f"dev-{i}", "text": t, "gold": y} for i, (t, y) in enumerate(dev)]
    cases += [{"name": k, "text": v} for k, v in EDGE_CASES.items()]
    correct = 0
    for c in cases:
        enc, out = run(model, tok, c["text"])
        c["ids"] = enc["input_ids"][0].tolist()
        c["logits"] = to_list(out.logits)
        c["label"] = int(out.logits.argmax(-1))
        correct += c.get("gold", -1) == c["label"]
    attention = []
    for text in ATTENTION_CASES:
        enc, out = run(model, tok, text, attentions=True)
        attention.append({
            "text": text,
            "ids": enc["input_ids"][0].tolist(),
            "attention": [[[[float(x) for x in row] for row in head] for head in layer[0].tolist()] for layer in out.attentions],
        })
    REF.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated_by": "scripts/make_reference.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "fixture": "minilm-sst2",
        "dev_accuracy": correct / len(dev),
        "cases": cases,
        "attention": attention,
    }
    (REF / "minilm-sst2.json").write_text(json.dumps(doc))
    print(f"minilm-sst2: {len(cases)} cases, dev accuracy {correct / len(dev):.4f}")
    return dev


def tiny_vocab(dev):
    words = Counter(w for t, _ in dev for w in t.lower().split())
    chars = sorted({ch for w in words for ch in w if ch.isascii() and ch.isprintable()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += [w for w, _ in words.most_common(400) if w not in vocab]
    return vocab


TINY_TEXTS = ["the movie was great", "it 's a charming and often affecting journey .", "", "Café déjà vu",
              "unknown wörds ★ here", "a " * 80, "[SEP] literal", "THE END"]


def tiny(name, vocab, hidden_act, num_labels, problem_type, legacy, seed):
    out_dir = ROOT / "tests/fixtures" / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_act=hidden_act, max_position_embeddings=64,
                     num_labels=num_labels, problem_type=problem_type)
    if num_labels == 3:
        cfg.id2label = {0: "joy", 1: "anger", 2: "surprise"}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    model = BertForSequenceClassification(cfg).eval()
    # Random LayerNorm parameters, so a swapped gamma/beta cannot pass unnoticed.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if n.endswith("weight") else 0.0))
    cfg.save_pretrained(out_dir)
    state = model.state_dict()
    if legacy:
        renamed = {}
        for k, v in state.items():
            k = k.removeprefix("bert.")
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            renamed[k] = v.contiguous()
        save_file(renamed, out_dir / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, out_dir / "pytorch_model.bin")
    # As a user would load it: vocab.txt + tokenizer_config.json, no tokenizer.json.
    tok = BertTokenizerFast.from_pretrained(out_dir)
    cases = []
    for text in TINY_TEXTS:
        enc, out = run(model, tok, text, max_length=64)
        cases.append({"text": text, "ids": enc["input_ids"][0].tolist(), "logits": to_list(out.logits)})
    (REF / f"{name}.json").write_text(json.dumps({"fixture": name, "cases": cases}, indent=1))
    print(f"{name}: {len(cases)} cases")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    dev = minilm(args.dev)
    vocab = tiny_vocab(dev)
    tiny("tiny-bin", vocab, "gelu_new", 3, "multi_label_classification", legacy=False, seed=1)
    tiny("tiny-legacy", vocab, "relu", 1, None, legacy=True, seed=2)


if __name__ == "__main__":
    main()
