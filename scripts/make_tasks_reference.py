#!/usr/bin/env python3
"""PyTorch references for sentence pairs, zero-shot, reranking and chunked long texts.

  "$(scripts/python-env)" scripts/make_tasks_reference.py [--dev ../shared/data/sst2/dev.tsv]

The truth is transformers (eager attention, float32) on the project's own checkpoints:
  - pairs:     tokenizer(a, b, truncation=True, max_length=L) (longest_first) and the
               model's logits, on minilm-sst2 (BERT: token types), the roberta fixture
               (<s> a </s></s> b </s>) and the deberta-v3 fixture;
  - zero-shot: pipeline("zero-shot-classification") on the deberta-v3 fixture (an NLI
               head: entailment, neutral, contradiction), single- and multi-label, one label;
  - rerank:    the (query, document) pairs through minilm-rerank, sigmoid of the logit,
               and the order they give;
  - chunks:    tokenizer(text, truncation=True, max_length=L, stride=S,
               return_overflowing_tokens=True) windows, each window's probabilities, and
               their mean and max.
Needs the minilm fixtures (scripts/fetch-fixture). Writes tests/fixtures/reference/tasks.json.
"""
import argparse
import csv
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ROOT / "tests/fixtures/families"
CACHE = ROOT / ".cache/fixtures"


def load(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    return tok, model


def logits(model, enc):
    with torch.no_grad():
        out = model(**{k: torch.tensor([v]) for k, v in enc.items() if k in ("input_ids", "token_type_ids", "attention_mask")})
    return [float(x) for x in out.logits[0].tolist()]


def probs(model, ls):
    t = torch.tensor(ls)
    if model.config.problem_type == "multi_label_classification" or len(ls) == 1:
        return torch.sigmoid(t).tolist()
    return torch.softmax(t, -1).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"))
    args = ap.parse_args()
    with open(args.dev, newline="") as f:
        dev = [r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    torch.manual_seed(0)
    models = {
        "minilm-sst2": CACHE / "minilm-sst2",
        "roberta": FAMILIES / "roberta",
        "deberta-v3": FAMILIES / "deberta-v3",
    }
    long_a = " ".join(dev[20:32])
    long_b = " ".join(dev[40:46])

    # Pairs: short ones, then pairs whose combined length needs longest_first at odd and
    # even lengths, one side much longer than the other, and both long.
    pairs = []
    for name, path in models.items():
        tok, model = load(path)
        cases = [(dev[i], dev[i + 1], None) for i in range(0, 16, 2)]
        cases += [(long_a, dev[3], 40), (dev[3], long_a, 41), (long_a, long_b, 33), (long_a, long_b, 48),
                  (long_a, long_b, None), ("", dev[5], None), ("a b c", "", 9)]
        for a, b, max_length in cases:
            L = max_length or tok.model_max_length
            L = min(L, model.config.max_position_embeddings - (2 if model.config.model_type == "roberta" else 0))
            enc = tok(a, b, truncation=True, max_length=L)
            pairs.append({
                "model": name, "text": a, "text_pair": b, "max_length": L,
                "ids": enc["input_ids"],
                "type_ids": enc.get("token_type_ids", [0] * len(enc["input_ids"])),
                "logits": logits(model, enc),
            })

    # Zero-shot, through transformers' own pipeline.
    nli = FAMILIES / "deberta-v3"
    zs = pipeline("zero-shot-classification", model=str(nli), tokenizer=str(nli), device="cpu",
                  model_kwargs={"attn_implementation": "eager"})
    texts = dev[50:58] + [" ".join(dev[60:70])]
    zero_shot = []
    for labels, multi in [(["sports", "politics", "tech"], False), (["sports", "politics", "tech"], True),
                          (["a film review"], False), (["good", "bad", "boring", "long"], False)]:
        for template in ["This example is {}.", "The topic is {}"]:
            for t in texts:
                out = zs(t, candidate_labels=labels, multi_label=multi, hypothesis_template=template)
                zero_shot.append({"text": t, "labels": labels, "multi_label": multi, "template": template,
                                  "ranked": out["labels"], "scores": out["scores"]})

    # Rerank: the query against each document, scored as a cross-encoder scores a pair.
    tok, model = load(CACHE / "minilm-rerank")
    query = "a moving and beautifully acted film"
    docs = dev[80:100] + [long_a]
    rerank = {"query": query, "documents": docs, "logits": [], "scores": []}
    for d in docs:
        enc = tok(query, d, truncation=True, max_length=512)
        ls = logits(model, enc)
        rerank["logits"].append(ls[0])
        rerank["scores"].append(float(torch.sigmoid(torch.tensor(ls[0]))))
    rerank["order"] = sorted(range(len(docs)), key=lambda i: (-rerank["scores"][i], i))

    # Chunks: the tokenizer's overflowing windows and each window's probabilities.
    chunks = []
    long_text = " ".join(dev[100:130])
    for name, path in models.items():
        tok, model = load(path)
        for text, max_length, stride in [(long_text, 64, 0), (long_text, 64, 16), (" ".join(dev[9:12]), 48, 40),
                                         (dev[7], 64, 8), (long_text, 128, 100)]:
            enc = tok(text, truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
            windows = []
            for i in range(len(enc["input_ids"])):
                w = {k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}
                ls = logits(model, w)
                windows.append({"ids": enc["input_ids"][i], "logits": ls, "probs": probs(model, ls)})
            p = torch.tensor([w["probs"] for w in windows])
            chunks.append({"model": name, "text": text, "max_length": max_length, "stride": stride,
                           "windows": windows, "mean": p.mean(0).tolist(), "max": p.max(0).values.tolist()})

    out = {
        "generated_by": "scripts/make_tasks_reference.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "pairs": pairs, "zero_shot": zero_shot, "rerank": rerank, "chunks": chunks,
    }
    path = ROOT / "tests/fixtures/reference/tasks.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}: {len(pairs)} pairs, {len(zero_shot)} zero-shot, {len(docs)} rerank, {len(chunks)} chunk cases")


if __name__ == "__main__":
    main()
