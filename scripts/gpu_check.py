#!/usr/bin/env python3
"""GPU acceptance check for bert-cli: parity with PyTorch, then speed against PyTorch.

Run through scripts/gpu-check, which finds the binary, the model and the CUDA libraries.
With --device cpu the same checks run on the CPU (smaller speed runs), so the script itself
is exercised on machines without a GPU.

1. Parity on real weights (MiniLM fine-tuned on SST-2): every case of the committed
   PyTorch reference (872 SST-2 dev sentences plus edge cases) through the binary in f32
   (logits within 1e-3, identical labels) and in f16 and bf16 (label agreement >= 99.5%),
   and the attention dump in f32 against PyTorch's attention probabilities (within 1e-3).
   Then every other family's committed random fixture (tests/fixtures/families/) against
   its reference: f32 logits within 1e-3 and identical labels; f16 label agreement
   reported.
2. Parity on a bert-base-shaped model with random weights, made here with transformers:
   bert-cli's f32 logits against transformers' f32 logits on the same device.
3. Throughput on that model, 128- and 512-token inputs at several batch sizes: bert-cli
   against PyTorch eager in the same run (fp16 on a GPU, f32 on a CPU), plus the device's
   measured matmul peak, so each rate is also a share of the peak.

Writes a Markdown report (--report) and prints it. Exits 1 if a parity check fails.
"""
import argparse
import json
import os

# Quiet transformers' progress bars and notices: the report is the output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests/fixtures/reference/minilm-sst2.json"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Report:
    def __init__(self):
        self.lines = []
        self.failures = []

    def add(self, text=""):
        self.lines.append(text)
        log(text)

    def check(self, ok, what):
        self.add(f"- {'PASS' if ok else 'FAIL'}: {what}")
        if not ok:
            self.failures.append(what)

    def table(self, header, rows):
        self.add("| " + " | ".join(header) + " |")
        self.add("|" + "---|" * len(header))
        for r in rows:
            self.add("| " + " | ".join(str(c) for c in r) + " |")
        self.add()


# ---------------------------------------------------------------- running bert-cli

def bert_cli(binary, model, device, dtype, extra=(), texts=None):
    """Runs `bert-cli classify` on `texts` (one per line); returns (jsonl records, seconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(t + "\n" for t in (texts or [])))
    cmd = [str(binary), "classify", "--quiet", "--model", str(model), "--device", device,
           "--dtype", dtype, "--format", "jsonl", "--all-scores", "--input", f.name, *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    os.unlink(f.name)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
    return [json.loads(l) for l in p.stdout.splitlines()], seconds


def line_safe(cases):
    """Cases whose text is one line (the CLI reads one input per line)."""
    return [c for c in cases if "\n" not in c["text"] and "\r" not in c["text"]]


# ---------------------------------------------------------------- parity

def parity_reference(report, args):
    ref = json.loads(REFERENCE.read_text())
    cases = line_safe(ref["cases"])
    texts = [c["text"] for c in cases]
    report.add(f"## Parity on real weights ({ref['fixture'] if 'fixture' in ref else 'MiniLM SST-2'})")
    report.add()
    report.add(f"Reference: PyTorch {ref.get('torch', '?')}, transformers {ref.get('transformers', '?')}, "
               f"f32 eager, committed in {REFERENCE.relative_to(ROOT)}; {len(cases)} of "
               f"{len(ref['cases'])} cases (the others span several lines).")
    report.add()
    rows = []
    for dtype in ["f32", "f16", "bf16"]:
        out, seconds = bert_cli(args.binary, args.parity_model, args.device, dtype,
                                ["--batch-size", "64"], texts)
        if len(out) != len(cases):
            report.check(False, f"{dtype}: {len(out)} results for {len(cases)} inputs")
            continue
        worst, agree = 0.0, 0
        for c, r in zip(cases, out):
            worst = max(worst, max(abs(a - b) for a, b in zip(r["logits"], c["logits"])))
            agree += int(r["label"] == ref_label(c, r))
        share = agree / len(cases)
        rows.append([dtype, f"{worst:.2e}", f"{agree}/{len(cases)} ({100 * share:.2f}%)", f"{seconds:.2f}"])
        if dtype == "f32":
            report.check(worst < 1e-3, f"f32 logits within 1e-3 of PyTorch (worst {worst:.2e})")
            report.check(agree == len(cases), f"f32 labels identical ({agree}/{len(cases)})")
        else:
            report.check(share >= 0.995, f"{dtype} label agreement >= 99.5% ({100 * share:.2f}%)")
    report.add()
    report.table(["dtype", "worst logit diff", "labels agree", "wall s (incl. load)"], rows)

    # Attention, f32, on the inputs the reference kept attention for.
    items = ref["attention"]
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "attn.json"
        bert_cli(args.binary, args.parity_model, args.device, "f32",
                 ["--dump-attention", str(dump)], [a["text"] for a in items])
        got = json.loads(dump.read_text())
    worst = 0.0
    records = got["inputs"] if isinstance(got, dict) else got
    for want, have in zip(items, records):
        layers = have["attention"]
        for lw, lh in zip(want["attention"], layers):
            for hw, hh in zip(lw, lh):
                for rw, rh in zip(hw, hh):
                    worst = max(worst, max(abs(a - b) for a, b in zip(rw, rh)))
    report.check(len(records) == len(items) and worst < 1e-3,
                 f"--dump-attention on {args.device}: {len(records)} inputs, worst probability diff {worst:.2e}")
    report.add()


def parity_families(report, args):
    """Each family's random fixture through the binary against its committed reference."""
    report.add("## Parity of the other families (random fixtures, tests/fixtures/families/)")
    report.add()
    rows = []
    for folder in sorted((ROOT / "tests/fixtures/families").iterdir()):
        ref_path = ROOT / f"tests/fixtures/reference/family-{folder.name}.json"
        if not ref_path.exists():
            continue
        ref = json.loads(ref_path.read_text())
        cases = line_safe(ref["cases"])
        row = [folder.name, ref.get("family", "?"), len(cases)]
        for dtype in ["f32", "f16"]:
            out, _ = bert_cli(args.binary, folder, args.device, dtype, ["--batch-size", "64"],
                              [c["text"] for c in cases])
            if len(out) != len(cases):
                report.check(False, f"{folder.name} {dtype}: {len(out)} results for {len(cases)} inputs")
                row += ["-", "-"]
                continue
            worst = max(max(abs(a - b) for a, b in zip(r["logits"], c["logits"])) for c, r in zip(cases, out))
            agree = sum(int(r["label"] == ref_label(c, r)) for c, r in zip(cases, out))
            row += [f"{worst:.2e}", f"{agree}/{len(cases)}"]
            if dtype == "f32":
                report.check(worst < 1e-3 and agree == len(cases),
                             f"{folder.name} f32: logits within 1e-3 (worst {worst:.2e}), labels {agree}/{len(cases)}")
        rows.append(row)
    report.add()
    report.table(["fixture", "model_type", "cases", "f32 worst diff", "f32 labels", "f16 worst diff",
                  "f16 labels"], rows)


def ref_label(case, record):
    """The reference's label as a name, via the record's label order."""
    names = list(record["scores"].keys())
    return names[case["label"]]


# ---------------------------------------------------------------- speed

def bert_base_random(tokenizer_dir, out):
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, num_labels=2,
                     id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if (tokenizer_dir / f).exists():
            shutil.copyfile(tokenizer_dir / f, out / f)
    return out


def exact_length(tok, count, length, seed):
    vocab = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        text = " ".join(rng.choice(vocab) for _ in range(length - 2))
        if len(tok(text)["input_ids"]) == length:
            texts.append(text)
    return texts


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype):
    import torch

    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    best = 0.0
    for _ in range(10):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def pytorch_rate(model, tok, texts, batch, device):
    """Sentences/s of PyTorch eager, tokenization and copying logits back included."""
    import torch

    with torch.inference_mode():
        enc = tok(texts[:batch], padding=True, return_tensors="pt").to(device)
        model(**enc)  # warm-up: kernels, allocator
        sync(device)
        t0 = time.perf_counter()
        for s in range(0, len(texts), batch):
            enc = tok(texts[s:s + batch], padding=True, truncation=True, max_length=512,
                      return_tensors="pt").to(device)
            model(**enc).logits.float().cpu()
        sync(device)
    return len(texts) / (time.perf_counter() - t0)


def speed(report, args):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    gpu = args.device.startswith("cuda")
    tdev = "cuda" if gpu else "cpu"
    base_dtype = torch.float16 if gpu else torch.float32
    cli_dtype = "f16" if gpu else "f32"
    if not gpu:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model_dir = bert_base_random(args.parity_model, work / "bert-base-random")
    tok = AutoTokenizer.from_pretrained(model_dir)

    report.add("## bert-base-shaped model (random weights, made here by transformers)")
    report.add()
    # Parity first: the speed of a wrong answer is worth nothing.
    ref_model = BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").to(tdev).eval()
    sample = exact_length(tok, 16, 128, seed=7) + exact_length(tok, 4, 512, seed=8)
    with torch.inference_mode():
        enc = tok(sample, padding=True, return_tensors="pt").to(tdev)
        want = ref_model(**enc).logits.float().cpu().tolist()
    out, _ = bert_cli(args.binary, model_dir, args.device, "f32", [], sample)
    worst = max(abs(a - b) for r, w in zip(out, want) for a, b in zip(r["logits"], w))
    report.check(len(out) == len(sample) and worst < 1e-3,
                 f"bert-base f32 on {args.device} vs transformers f32 on {tdev}: worst logit diff {worst:.2e}")
    report.add()

    peak = matmul_peak(tdev, base_dtype)
    ptname = "fp16" if gpu else "f32"
    report.add(f"Matmul peak measured now with PyTorch ({ptname}, {'8192' if gpu else '2048'}^3, best of 10): "
               f"{peak / 1e12:.2f} TFLOP/s.")
    report.add()
    model = ref_model.to(base_dtype)
    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    plans = [(128, [16, 64, 256]), (512, [8, 32, 64])] if gpu else [(128, [16, 64]), (512, [8])]
    rows = []
    for length, sizes in plans:
        count = (args.sequences * 128) // length
        texts = exact_length(tok, count, length, seed=length)
        flop_per_seq = layers * (2 * length * (4 * h * h + 2 * h * i) + 4 * length * length * h)
        for batch in sizes:
            pt = pytorch_rate(model, tok, texts, batch, tdev)
            extra = ["--batch-size", str(batch), "--max-batch-tokens", str(max(batch * length, 8192))]
            _, startup = bert_cli(args.binary, model_dir, args.device, cli_dtype, extra, [])
            _, startup2 = bert_cli(args.binary, model_dir, args.device, cli_dtype, extra, [])
            out, wall = bert_cli(args.binary, model_dir, args.device, cli_dtype, extra, texts)
            assert len(out) == len(texts), "bert-cli lost inputs"
            ours = len(texts) / max(wall - min(startup, startup2), 1e-9)
            rows.append([length, batch, len(texts), f"{ours:.1f}", f"{pt:.1f}", f"{ours / pt:.2f}x",
                         f"{100 * ours * flop_per_seq / peak:.0f}%", f"{100 * pt * flop_per_seq / peak:.0f}%"])
            log(f"  {length} tokens, batch {batch}: bert-cli {ours:.0f}/s, PyTorch {pt:.0f}/s")
    report.add(f"Throughput, sentences/s (bert-cli {cli_dtype}, start-up and model load taken off; "
               f"PyTorch eager {ptname}, tokenization and copying logits back included):")
    report.add()
    report.table(["tokens", "batch", "inputs", "bert-cli", f"PyTorch {ptname}", "ratio",
                  "bert-cli % of peak", "PyTorch % of peak"], rows)


# ---------------------------------------------------------------- main

def cpu_name(threads):
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {threads} threads"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown CPU'}, {threads} threads"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", type=Path, required=True)
    ap.add_argument("--parity-model", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--sequences", type=int, default=4096, help="inputs of 128 tokens (fewer when longer)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()

    report = Report()
    report.add(f"# bert-cli GPU check ({args.device})")
    report.add()
    report.add(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Host: {platform.node()}.")
    try:
        import torch

        name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name(args.threads)
        report.add(f"Device: {name}; PyTorch {torch.__version__}.")
    except Exception as e:  # the report still says what it could not learn
        report.add(f"Device: unknown ({e}).")
    report.add(f"Binary: {args.binary}.")
    report.add()
    t0 = time.perf_counter()
    parity_reference(report, args)
    parity_families(report, args)
    if not args.skip_speed:
        speed(report, args)
    report.add(f"Took {time.perf_counter() - t0:.0f} s. Failures: {len(report.failures)}.")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(report.lines) + "\n")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
