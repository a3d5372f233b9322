#!/usr/bin/env python3
"""One long input through a ModernBERT-base-shaped random model (22 layers, 8,192 positions):
wall time and peak memory of bert-cli against PyTorch (SDPA and eager), each in a process of
its own, same thread count, same machine, same run.

  "$(scripts/python-env)" scripts/bench_long.py --binary target/release/bert-cli [--tokens 8192]
                                                [--threads 2] [--repeat 2]

bert-cli's time excludes its start-up (measured on empty input and taken off), as PyTorch's
excludes loading the model; peak RSS is each process's high-water mark (VmHWM), model
included. Prints a markdown table, with the CPU named.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_description, family_base_random, run_binary  # noqa: E402

TORCH = r'''
import json, resource, sys, time, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model_dir, path, impl, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation=impl).eval()
text = open(path).read()
t0 = time.perf_counter()
with torch.inference_mode():
    enc = tok(text, truncation=True, max_length=8192, return_tensors="pt")
    logits = model(**enc).logits
secs = time.perf_counter() - t0
print(json.dumps({"secs": secs, "tokens": int(enc["input_ids"].shape[1]),
                  "label": int(logits.argmax(-1))}))
'''


def peak_and_output(cmd, threads):
    """Runs `cmd`, polling its VmHWM; returns (stdout, peak KiB)."""
    from bench import peak_rss_kib

    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    rss = 0
    while p.poll() is None:
        rss = max(rss, peak_rss_kib(p.pid))
        time.sleep(0.05)
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {p.returncode}: {err.decode()[-500:]}")
    return out.decode(), rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    model = family_base_random("modernbert-base")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    words = "a gorgeous witty movie that is utterly boring in its plot".split()
    text, i = "", 0
    while len(tok(text)["input_ids"]) < args.tokens:
        text += " ".join(words[(i + k) % len(words)] for k in range(50)) + " "
        i += 1
    ids = tok(text, truncation=True, max_length=args.tokens)["input_ids"]
    text = tok.decode(ids[1:-1])
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text.replace("\n", " ") + "\n")
    empty = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    empty.close()
    n = len(tok(text)["input_ids"])
    print(f"# one input of {n} tokens, ModernBERT-base-shaped random model, {args.threads} threads")
    print(f"# CPU: {cpu_description()}")
    print(f"# fastest of {args.repeat}; time excludes start-up / model loading; peak RSS includes the model")
    print()
    print("| tool | seconds | peak RSS |")
    print("|---|---:|---:|")
    base = [args.binary, "classify", "--quiet", "--format", "tsv", "--model", str(model), "--max-length", "8192"]
    best = None
    for _ in range(args.repeat):
        startup = run_binary(base + ["--input", empty.name], args.threads)[0]
        wall, rss = run_binary(base + ["--input", f.name], args.threads)
        run = (wall - startup, rss)
        best = run if best is None or run[0] < best[0] else best
    print(f"| bert-cli | {best[0]:.2f} | {best[1] / 1024:.0f} MB |", flush=True)
    for impl in ("sdpa", "eager"):
        best = None
        for _ in range(args.repeat):
            try:
                out, rss = peak_and_output([sys.executable, "-c", TORCH, str(model), f.name, impl,
                                            str(args.threads)], args.threads)
            except RuntimeError as e:
                print(f"| PyTorch {impl} | failed: {str(e)[:80]} | |", flush=True)
                break
            r = json.loads(out.strip().splitlines()[-1])
            best = (r["secs"], rss) if best is None or r["secs"] < best[0] else best
        if best:
            print(f"| PyTorch {impl} | {best[0]:.2f} | {best[1] / 1024:.0f} MB |", flush=True)
    os.unlink(f.name)
    os.unlink(empty.name)


if __name__ == "__main__":
    main()
