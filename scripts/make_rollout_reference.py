#!/usr/bin/env python3
"""Attention rollout reference for the HTML attention view's test.

    "$(scripts/python-env)" scripts/make_rollout_reference.py

Reads PyTorch's attention probabilities committed in tests/fixtures/reference/minilm-sst2.json
(made by make_reference.py from transformers, eager, f32) and computes, with numpy in
float64, attention rollout (Abnar and Zuidema, 2020): per layer the head-averaged attention
with the residual, 0.5 A + 0.5 I, multiplied through the layers; the first token's row after
every layer. Writes tests/fixtures/reference/rollout-minilm-sst2.json.
"""
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ref = json.loads((ROOT / "tests/fixtures/reference/minilm-sst2.json").read_text())
cases = []
for case in ref["attention"]:
    att = np.array(case["attention"], dtype=np.float64)  # [layer, head, query, key]
    n = att.shape[-1]
    r = np.eye(n)
    rows = []
    for layer in att:
        a = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(n)
        r = a @ r
        rows.append(r[0].tolist())
    cases.append({"text": case["text"], "ids": case["ids"], "rollout": rows})
out = {"generated_by": "scripts/make_rollout_reference.py", "numpy": np.__version__,
       "source": "tests/fixtures/reference/minilm-sst2.json (PyTorch attentions)", "cases": cases}
path = ROOT / "tests/fixtures/reference/rollout-minilm-sst2.json"
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path.relative_to(ROOT)}: {len(cases)} cases")
