#!/usr/bin/env python3
"""Trains the minilm-sst2 fixture's classification head (needs torch + transformers).

The encoder (all-MiniLM-L6-v2, as scripts/fetch-fixture unpacks it) stays frozen; the
pooler (initialised from the checkpoint's) and a 2-way classifier are trained briefly on
SST-2 train so the fixture's labels mean something. Writes
tests/fixtures/minilm-sst2-head/head.safetensors (about 600 KB), which is committed.

  scripts/fetch-fixture   # unpack the encoder first (the head file may be absent then)
  python scripts/train_head.py [--train ../shared/data/sst2/train.tsv] [--examples 20000]
"""
import argparse
import csv
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default=str(ROOT.parent / "shared/data/sst2/train.tsv"))
    ap.add_argument("--encoder", default=str(ROOT / ".cache/fixtures/all-MiniLM-L6-v2"))
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/minilm-sst2-head/head.safetensors"))
    args = ap.parse_args()
    torch.manual_seed(0)

    with open(args.train, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(rows), generator=g)[: args.examples].tolist()
    texts = [rows[i]["sentence"] if "sentence" in rows[i] else rows[i]["text"] for i in order]
    labels = torch.tensor([int(rows[i]["label"]) for i in order])

    tok = AutoTokenizer.from_pretrained(args.encoder)
    enc = BertModel.from_pretrained(args.encoder, attn_implementation="eager").eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            b = tok(texts[i : i + 256], padding=True, truncation=True, max_length=128, return_tensors="pt")
            feats.append(enc(**b).last_hidden_state[:, 0])
            print(f"features {i + len(b['input_ids'])}/{len(texts)}", end="\r", flush=True)
    feats = torch.cat(feats)
    print()

    h = feats.shape[1]
    pooler = torch.nn.Linear(h, h)
    pooler.load_state_dict(enc.pooler.dense.state_dict())
    clf = torch.nn.Linear(h, 2)
    torch.nn.init.normal_(clf.weight, std=0.02)
    torch.nn.init.zeros_(clf.bias)
    params = list(pooler.parameters()) + list(clf.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    n_val = len(texts) // 10
    for epoch in range(args.epochs):
        perm = torch.randperm(len(texts) - n_val, generator=g) + n_val
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            logits = clf(torch.tanh(pooler(feats[idx])))
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (clf(torch.tanh(pooler(feats[:n_val]))).argmax(-1) == labels[:n_val]).float().mean()
        print(f"epoch {epoch}: held-out accuracy {acc:.3f}")

    tensors = {
        "bert.pooler.dense.weight": pooler.weight.detach().contiguous(),
        "bert.pooler.dense.bias": pooler.bias.detach().contiguous(),
        "classifier.weight": clf.weight.detach().contiguous(),
        "classifier.bias": clf.bias.detach().contiguous(),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(tensors, args.out, metadata={"format": "pt"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
