#!/usr/bin/env python3
"""PyTorch's answer for ModernBERT on long inputs: the committed ModernBERT fixture with its
position limit raised to 8,192 (rotary positions have no table, so the weights are the same),
on SST-2 dev sentences joined into one text of 8,192 tokens and one of 3,000. Past 2,048
tokens bert-cli computes attention a block of queries at a time; these cases check that
against transformers (eager, float32; SDPA's logits are recorded beside them).

  "$(scripts/python-env)" scripts/make_long_reference.py [--dev ../shared/data/sst2/dev.tsv]

Writes tests/fixtures/reference/modernbert-long.json (committed). Deterministic.
"""
import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/families/modernbert"
OUT = ROOT / "tests/fixtures/reference/modernbert-long.json"
PATCH = {"max_position_embeddings": 8192}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    import transformers as tf

    tf.logging.set_verbosity_error()
    with open(args.dev, newline="", encoding="utf-8") as f:
        dev = [r["text"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for f in FIXTURE.iterdir():
            shutil.copyfile(f, folder / f.name)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(PATCH)
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        tok = tf.AutoTokenizer.from_pretrained(str(folder))
        models = {impl: tf.AutoModelForSequenceClassification.from_pretrained(
            str(folder), attn_implementation=impl).eval() for impl in ("eager", "sdpa")}
        cases = []
        for n in (3000, 8192):
            text, k = "", 0
            while len(tok(text)["input_ids"]) < n:
                text += dev[k % len(dev)]
                k += 1
            enc = tok(text, truncation=True, max_length=n, return_tensors="pt")
            ids = enc["input_ids"][0].tolist()
            assert len(ids) == n, len(ids)
            # The case's text is cut where the tokenizer cut it, so that bert-cli at the
            # full 8,192 reads the same tokens.
            text = tok.decode(ids[1:-1])
            again = tok(text, return_tensors="pt")
            assert again["input_ids"][0].tolist() == ids, "decoded text does not tokenize back"
            with torch.inference_mode():
                logits = {impl: m(**enc).logits[0].tolist() for impl, m in models.items()}
            cases.append({"tokens": n, "text": text, "ids": ids, "logits": logits["eager"],
                          "sdpa_logits": logits["sdpa"]})
    doc = {"generated_by": "scripts/make_long_reference.py", "torch": torch.__version__,
           "transformers": tf.__version__, "fixture": "modernbert", "config_patch": PATCH,
           "cases": cases}
    OUT.write_text(json.dumps(doc) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
