#!/usr/bin/env python3
"""Zero-shot and reranking: bert-cli against transformers on this CPU, in one run.

Run through scripts/bench-tasks (which builds the binary and the Python environment).
  zero-shot  200 SST-2 dev sentences x 3 candidate labels, a DeBERTa-v3-base-shaped random
             NLI model (entailment, neutral, contradiction), against transformers'
             pipeline("zero-shot-classification", batch_size=32);
  rerank     1,000 review snippets against one query, the MiniLM-L6 cross-encoder fixture
             (cross-encoder/ms-marco-MiniLM-L-6-v2's shape), against the same pairs through
             transformers in batches of 32 (tokenizer(query, passage, truncation=True)).
bert-cli's time is its wall time less its start-up (the same command on empty input), as
the Python baselines are timed after loading. Medians of --repeat runs, alternating tools.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, cpu_name, family_base_random, log, run_binary, snippets, sst2_dev  # noqa: E402

QUERY = "a moving and beautifully acted film"
LABELS = ["sports", "politics", "film"]


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                keep = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
                return " ".join(f for f in keep if f in have)
    except OSError:
        pass
    return platform.machine()


def nli_model():
    """A DeBERTa-v3-base-shaped NLI classifier with random weights and the fixture's tokenizer."""
    return family_base_random("deberta-v3-base", labels=("entailment", "neutral", "contradiction"),
                              suffix="nli-random")


def bert_cli_time(binary, command, model, extra, texts, threads):
    """Wall time less start-up, and peak RSS, of one bert-cli run over `texts`."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(texts) + "\n")
    empty = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    empty.close()
    base = [str(binary), command, "--quiet", "--model", str(model), "--format", "tsv", *extra]
    startup = min(run_binary(base + ["--input", empty.name], threads)[0] for _ in range(2))
    wall, rss = run_binary(base + ["--input", f.name], threads)
    os.unlink(f.name)
    os.unlink(empty.name)
    return max(wall - startup, 1e-9), rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="zero-shot,rerank")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    torch.set_num_threads(args.threads)
    log(f"bench-tasks: {cpu_name()} [{cpu_flags()}], {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
    rows = []
    only = args.only.split(",")

    if "zero-shot" in only:
        model = nli_model()
        texts = sst2_dev()[:200]
        zs = pipeline("zero-shot-classification", model=str(model), tokenizer=str(model), device="cpu",
                      model_kwargs={"attn_implementation": "eager"})
        zs(texts[:4], candidate_labels=LABELS, batch_size=32)  # warm-up
        py, cli, rss = [], [], 0
        for r in range(args.repeat):
            t0 = time.perf_counter()
            with torch.inference_mode():
                outs = zs(texts, candidate_labels=LABELS, batch_size=32)
            py.append(time.perf_counter() - t0)
            t, rss = bert_cli_time(args.binary, "zero-shot", model, ["--labels", ",".join(LABELS)], texts,
                                   args.threads)
            cli.append(t)
            log(f"  zero-shot run {r + 1}: transformers {py[-1]:.2f} s, bert-cli {cli[-1]:.2f} s")
        assert len(outs) == len(texts)
        rows.append(("zero-shot: 200 SST-2 dev x 3 labels, deberta-v3-base (random NLI)",
                     "pipeline(zero-shot-classification, batch_size=32)", statistics.median(py),
                     statistics.median(cli), rss, len(texts) * len(LABELS)))

    if "rerank" in only:
        model = ROOT / ".cache/fixtures/minilm-rerank"
        passages = snippets(1000)
        tok = AutoTokenizer.from_pretrained(model)
        m = AutoModelForSequenceClassification.from_pretrained(model, attn_implementation="eager").eval()

        def score_all():
            scores = []
            with torch.inference_mode():
                for i in range(0, len(passages), 32):
                    chunk = passages[i:i + 32]
                    enc = tok([QUERY] * len(chunk), chunk, padding=True, truncation=True, return_tensors="pt")
                    scores.extend(torch.sigmoid(m(**enc).logits[:, 0]).tolist())
            return sorted(range(len(scores)), key=lambda i: -scores[i])

        score_all()  # warm-up
        py, cli, rss = [], [], 0
        for r in range(args.repeat):
            t0 = time.perf_counter()
            score_all()
            py.append(time.perf_counter() - t0)
            t, rss = bert_cli_time(args.binary, "rerank", model, ["--query", QUERY], passages, args.threads)
            cli.append(t)
            log(f"  rerank run {r + 1}: transformers {py[-1]:.2f} s, bert-cli {cli[-1]:.2f} s")
        rows.append(("rerank: 1,000 review snippets, MiniLM-L6 cross-encoder",
                     "transformers, batches of 32 (sorted by score after)", statistics.median(py),
                     statistics.median(cli), rss, len(passages)))

    print(f"\nCPU: {cpu_name()} [{cpu_flags()}], {args.threads} threads; medians of {args.repeat}\n")
    print("| workload | baseline | baseline s | bert-cli s | bert-cli / baseline speed | pairs/s (bert-cli) | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, base, py, cli, rss, n in rows:
        print(f"| {name} | {base} | {py:.2f} | {cli:.2f} | {py / cli:.2f}x | {n / cli:.0f} | {rss / 1024:.0f} MB |")


if __name__ == "__main__":
    main()
