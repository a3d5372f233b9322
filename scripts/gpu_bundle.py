#!/usr/bin/env python3
"""Packs what scripts/gpu-check needs on a lent GPU machine into one file small enough to
travel (the tree that goes there is capped at 64 MiB), and unpacks it there. Standard
library only, so it runs on either side.

The MiniLM fixture's weights are 91 MB, half of it the word-embedding table. The parity
check only feeds the token ids of the committed reference cases, so only those rows
travel (about 4,600 of 30,522); unpacking puts them back at their ids and zeros the
rest. Every tensor the reference cases touch is bit-identical to the original.

  gpu_bundle.py pack BINARY FIXTURE_DIR REFERENCE_JSON OUT.tar.xz
  gpu_bundle.py unpack BUNDLE.tar.xz DEST_DIR      # DEST/bert-cli, DEST/minilm-sst2/
"""
import io
import json
import lzma
import struct
import sys
import tarfile
from pathlib import Path

WORDS = "embeddings.word_embeddings.weight"
ROWS_SUFFIX = ".kept_rows"
SPECIAL_IDS = range(0, 104)  # [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], v["shape"], bytes(body[v["data_offsets"][0]:v["data_offsets"][1]]))
               for k, v in header.items()}
    return tensors, meta


def write_safetensors(tensors, meta=None):
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def words_name(tensors):
    return next(k for k in tensors if k.endswith(WORDS))


def pack(binary, fixture, reference, out):
    tensors, meta = read_safetensors(Path(fixture) / "model.safetensors")
    ref = json.loads(Path(reference).read_text())
    keep = sorted(set(SPECIAL_IDS) | {i for c in ref["cases"] for i in c["ids"]}
                  | {i for a in ref["attention"] for i in a["ids"]})
    name = words_name(tensors)
    dtype, (vocab, hidden), raw = tensors[name]
    assert dtype == "F32", dtype
    width = hidden * 4
    rows = b"".join(raw[i * width:(i + 1) * width] for i in keep)
    tensors[name] = (dtype, [len(keep), hidden], rows)
    tensors[name + ROWS_SUFFIX] = ("I64", [len(keep)], struct.pack(f"<{len(keep)}q", *keep))
    meta = dict(meta or {}, bert_cli_pruned_vocab=str(vocab))
    with tarfile.open(out, "w:xz", preset=6) as tar:
        tar.add(binary, arcname="bert-cli")
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
            if (Path(fixture) / f).exists():
                tar.add(Path(fixture) / f, arcname=f"minilm-sst2/{f}")
        blob = write_safetensors(tensors, meta)
        info = tarfile.TarInfo("minilm-sst2/model.pruned.safetensors")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    print(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB ({len(keep)} of {vocab} embedding rows kept)")


def unpack(bundle, dest):
    dest = Path(dest)
    with tarfile.open(bundle, "r:xz") as tar:
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    model = dest / "minilm-sst2"
    tensors, meta = read_safetensors(model / "model.pruned.safetensors")
    name = words_name(tensors)
    _, ids_shape, ids_raw = tensors.pop(name + ROWS_SUFFIX)
    ids = struct.unpack(f"<{ids_shape[0]}q", ids_raw)
    dtype, (_, hidden), rows = tensors[name]
    vocab = int(meta.pop("bert_cli_pruned_vocab"))
    width = hidden * 4
    full = bytearray(vocab * width)
    for k, i in enumerate(ids):
        full[i * width:(i + 1) * width] = rows[k * width:(k + 1) * width]
    tensors[name] = (dtype, [vocab, hidden], bytes(full))
    (model / "model.safetensors").write_bytes(write_safetensors(tensors, meta or None))
    (model / "model.pruned.safetensors").unlink()
    (dest / "bert-cli").chmod(0o755)
    print(dest)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "pack":
        pack(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "unpack":
        unpack(*sys.argv[2:])
    else:
        sys.exit(__doc__)
