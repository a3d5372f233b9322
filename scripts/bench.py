#!/usr/bin/env python3
"""bert-cli against PyTorch eager and ONNX Runtime on this CPU, in one run.

Run through scripts/bench (which builds the binary and the Python environment). Prints,
per model and workload, sentences/s and real-token/s for each tool and configuration,
bert-cli's ratio to each baseline's best configuration, bert-cli's peak resident memory,
the share of the machine's f32 matmul peak (measured here, with PyTorch) that bert-cli
reaches, and a cold one-shot classification against the same job in Python.
"""
import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache/bench"
SST2 = ROOT.parent / "shared/data/sst2"
FIXTURE = ROOT / ".cache/fixtures/minilm-sst2"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The flags that decide which kernels run (bert-cli's and the baselines'), so that results
# from different hosts are never read as one.
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
         "amx_int8", "amx_bf16")


def cpu_description():
    """Model name, vendor family/model, the kernel-relevant flags, L3 size."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return cpu_name()
    flags = set(info.get("flags", "").split())
    have = [f for f in FLAGS if f in flags]
    l3 = ""
    try:
        out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("L3 cache:"):
                l3 = f", L3 {int(line.split()[2]) // 2**20} MiB"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu_name()} ({info.get('vendor_id', '?')} family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}{l3}; flags: {' '.join(have) or 'none of ' + ' '.join(FLAGS)})")


# ---------------------------------------------------------------- workloads

def sst2_dev():
    path = SST2 / "dev.tsv"
    if path.exists():
        lines = path.read_text().splitlines()[1:]
        return [l.split("\t")[0] for l in lines]
    # Without ../shared: the 872 dev sentences are in the committed parity reference.
    ref = json.loads((ROOT / "tests/fixtures/reference/minilm-sst2.json").read_text())
    return [c["text"] for c in ref["cases"] if c["name"].startswith("dev-")]


def snippets(n):
    path = SST2 / "rt_snippets.txt"
    if path.exists():
        return [l for l in path.read_text().splitlines() if l.strip()][:n]
    # Without ../shared: review-length inputs built from dev sentences, two or three each.
    dev, rng = sst2_dev(), random.Random(0)
    return [" ".join(rng.sample(dev, rng.choice([2, 3]))) for _ in range(n)]


def exact_length(tok, count, length, seed):
    """`count` texts of exactly `length` tokens ([CLS] and [SEP] included)."""
    vocab = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    texts = []
    while len(texts) < count:
        words = [rng.choice(vocab) for _ in range(length - 2)]
        text = " ".join(words)
        if len(tok(text)["input_ids"]) == length:
            texts.append(text)
    return texts


# ---------------------------------------------------------------- models

def bert_base_random():
    """A bert-base-shaped classifier with random weights (speed does not depend on values)."""
    out = CACHE / "bert-base-random"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    log("bench: generating bert-base-shaped random weights (once)")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, num_labels=2,
                     id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model = BertForSequenceClassification(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copyfile(FIXTURE / f, out / f)
    return out


# Base-sized random models of the other families: (config class kwargs, model_type, the
# committed fixture whose tokenizer they borrow). Speed does not depend on weight values or
# on which tokens a text becomes, only on how many; each tool tokenizes with the same files.
FAMILY_BASES = {
    "distilbert-base": ("distilbert", dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                                           max_position_embeddings=512)),
    "roberta-base": ("roberta", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                                     pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "electra-base": ("electra", dict(vocab_size=30522, embedding_size=768, hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)),
    "deberta-v3-base": ("deberta-v3", dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072,
                                           max_position_embeddings=512, relative_attention=True,
                                           position_buckets=256, max_relative_positions=-1,
                                           pos_att_type=["p2c", "c2p"], share_att_key=True,
                                           norm_rel_ebd="layer_norm", position_biased_input=False,
                                           type_vocab_size=0, layer_norm_eps=1e-7, pooler_hidden_size=768,
                                           pooler_hidden_act="gelu")),
    # answerdotai/ModernBERT-base's shape (22 layers, GeGLU 1152, a global layer every 3rd,
    # local window 128); the ids are the fixture tokenizer's.
    "modernbert-base": ("modernbert", dict(vocab_size=50368, hidden_size=768, num_hidden_layers=22,
                                           num_attention_heads=12, intermediate_size=1152,
                                           max_position_embeddings=8192, global_attn_every_n_layers=3,
                                           local_attention=128, global_rope_theta=160000.0,
                                           local_rope_theta=10000.0, classifier_pooling="mean",
                                           pad_token_id=1003, bos_token_id=1001, eos_token_id=1002,
                                           cls_token_id=1001, sep_token_id=1002)),
    # facebook/bart-large-mnli's shape (12 + 12 layers of 1024, 16 heads, FFN 4096).
    "bart-large-mnli": ("bart", dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                                     encoder_attention_heads=16, decoder_attention_heads=16,
                                     encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
                                     scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     decoder_start_token_id=2, forced_eos_token_id=2)),
}


def family_base_random(name, labels=("NEGATIVE", "POSITIVE"), suffix="random"):
    """A base-sized classifier of another family with random weights, `labels`, and the
    tokenizer of its committed test fixture, in .cache/bench/<name>-<suffix>."""
    out = CACHE / f"{name}-{suffix}"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    fixture, kwargs = FAMILY_BASES[name]
    src = ROOT / "tests/fixtures/families" / fixture
    model_type = json.loads((src / "config.json").read_text())["model_type"]
    log(f"bench: generating {name}-shaped random weights (once)")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={l: i for i, l in enumerate(labels)}, **kwargs)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copyfile(f, out / f.name)
    return out


def arch(cfg):
    """hidden, intermediate, layers, heads under any family's key names."""
    get = lambda *keys: next(cfg[k] for k in keys if k in cfg)
    return (get("hidden_size", "dim"), get("intermediate_size", "hidden_dim"),
            get("num_hidden_layers", "n_layers"), get("num_attention_heads", "n_heads"))


def flops(cfg, lengths):
    """FLOPs bert-cli performs for sequences of these (unpadded) lengths: every layer in
    full but the last, which runs for [CLS] alone (the classifier reads nothing else):
    its query, then keys and values folded into it (each head's query through Wk, one
    score and one weighted sum per token, the sum through Wv), the output projection and
    the feed-forward. Counting the full last layer would credit bert-cli with work it
    skips."""
    if cfg.get("model_type") in ("modernbert", "bart"):
        return float("nan")  # not modelled: rotary/windowed layers, a decoder
    h, i, layers, heads = arch(cfg)
    full = lambda t: 2 * t * (4 * h * h + 2 * h * i) + 4 * t * t * h
    last = lambda t: 2 * (3 * h * h + 2 * heads * t * h) + 2 * (h * h + 2 * h * i)
    return sum((layers - 1) * full(t) + last(t) for t in lengths)


# ---------------------------------------------------------------- tools

def batches(tok, texts, batch, sort, limit=512):
    order = list(range(len(texts)))
    if sort:
        lens = [len(tok(t, truncation=True, max_length=limit)["input_ids"]) for t in texts]
        order.sort(key=lambda k: lens[k])
    for s in range(0, len(order), batch):
        yield [texts[k] for k in order[s:s + batch]]


def max_tokens(model_dir):
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    n = cfg["max_position_embeddings"]
    if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= cfg.get("pad_token_id", 1) + 1
    return min(n, 512)


def torch_attention(model_dir):
    """PyTorch at its best per family: eager for the BERT-era families (their figures since
    run 1), SDPA (transformers' default, its fastest CPU path) for ModernBERT and BART."""
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    return "sdpa" if model_type in ("modernbert", "bart") else "eager"


def run_pytorch(model_dir, texts, batch, sort, threads, int8=False, labels=None, bf16=False):
    """Seconds for `texts`; with `int8`, PyTorch's dynamic quantization (`quantize_dynamic`
    of every nn.Linear to qint8, activations quantized per call), the usual CPU recipe;
    with `bf16`, under `torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's bf16
    matmuls, on AMX tiles where the CPU has them), the one-line recipe for recent CPUs.
    With `labels` (a list), the predicted label of each text is appended to it in input
    order (`sort` must be off)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, attn_implementation=torch_attention(model_dir)).eval()
    if int8:
        import warnings

        # Deprecated in favour of torchao (not installed here), still PyTorch's own recipe.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    limit = max_tokens(model_dir)
    import contextlib

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast:
        for chunk in batches(tok, texts, batch, sort, limit):
            enc = tok(chunk, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            logits = model(**enc).logits
            if labels is not None:
                labels.extend(model.config.id2label[int(i)] for i in logits.argmax(-1))
    return time.perf_counter() - t0


def onnx_model(model_dir, name):
    """Exports to ONNX once and optimises with onnxruntime's transformer optimizer; None
    where the export fails (the table then says so)."""
    path = CACHE / f"{name}.opt.onnx"
    if path.exists():
        return path
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    log(f"bench: exporting {name} to ONNX and optimising (once)")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    inputs = AutoTokenizer.from_pretrained(model_dir).model_input_names
    raw = CACHE / f"{name}.onnx"
    ids = torch.ones((2, 16), dtype=torch.long)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    names = [n for n in example if n in inputs]
    axes = {0: "batch", 1: "seq"}

    class Positional(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args))).logits

    try:
        torch.onnx.export(Positional(model), tuple(example[n] for n in names), str(raw),
                          input_names=names, output_names=["logits"],
                          dynamic_axes={**{n: axes for n in names}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    except Exception as e:  # noqa: BLE001 - any exporter failure means "no ORT baseline"
        log(f"bench: ONNX export of {name} failed ({type(e).__name__}: {str(e)[:200]}); no ONNX Runtime baseline")
        return None
    cfg = model.config
    kind = "bert" if cfg.model_type in ("bert", "distilbert", "electra", "roberta", "xlm-roberta", "camembert") else None
    if kind is None:
        shutil.copyfile(raw, path)
        return path
    h, _, _, heads = arch(cfg.to_dict())
    opt = optimize_model(str(raw), model_type=kind, num_heads=heads, hidden_size=h)
    opt.save_model_to_file(str(path))
    return path


def onnx_int8_model(name, opt_path):
    """ONNX Runtime's dynamic int8 of the optimised graph (`quantize_dynamic`, QInt8
    weights, activations quantized per call), as its BERT recipe does: optimise, then
    quantize. Once; None where quantization fails."""
    path = CACHE / f"{name}.int8.onnx"
    if path.exists():
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log(f"bench: quantizing {name} for ONNX Runtime (dynamic int8, once)")
    try:
        import onnx

        # The optimiser's fused ops (Attention, SkipLayerNormalization) are in Microsoft's
        # domain, where shape inference gives no types: say that tensors are f32.
        quantize_dynamic(str(opt_path), str(path), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as e:  # noqa: BLE001 - any failure means "no ORT int8 baseline"
        log(f"bench: ONNX Runtime quantization of {name} failed ({type(e).__name__}: {str(e)[:200]})")
        return None
    return path


def run_ort(model_dir, onnx_path, texts, batch, sort, threads, labels=None):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    id2label = {int(k): v for k, v in json.loads((Path(model_dir) / "config.json").read_text())["id2label"].items()}
    names = {i.name for i in sess.get_inputs()}
    limit = max_tokens(model_dir)
    t0 = time.perf_counter()
    for chunk in batches(tok, texts, batch, sort, limit):
        enc = tok(chunk, padding=True, truncation=True, max_length=limit, return_tensors="np")
        (logits,) = sess.run(None, {k: v.astype("int64") for k, v in enc.items() if k in names})
        if labels is not None:
            labels.extend(id2label[int(i)] for i in logits.argmax(-1))
    return time.perf_counter() - t0


def peak_rss_kib(pid):
    """VmHWM of a live process (KiB), or 0 once it has exited."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_binary(cmd, threads):
    """Wall time and peak RSS (KiB) of one child process. The RSS is polled from /proc
    (VmHWM, a high-water mark): getrusage would report the forked Python parent's size.
    Being a high-water mark, it needs no fast polling; every 5 ms the poller took CPU
    from the child on 2 cores (MiniLM on SST-2 dev, median of 5: 2.53 s polled every
    5 ms, 2.48 s every 50 ms), which the in-process Python baselines never pay."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    rss = 0
    while p.poll() is None:
        rss = max(rss, peak_rss_kib(p.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode()
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} exited {p.returncode}: {err}")
    return wall, rss


def run_bert_cli(binary, model_dir, texts, batch, threads, extra=()):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(texts) + "\n")
    empty = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    empty.close()
    base = [str(binary), "classify", "--quiet", "--model", str(model_dir), "--format", "tsv",
            "--batch-size", str(batch), *extra]
    # Start-up (process, model load) measured on empty input and taken off, as the
    # Python baselines are timed after their model is loaded.
    startup = min(run_binary(base + ["--input", empty.name], threads)[0] for _ in range(2))
    wall, rss = run_binary(base + ["--input", f.name], threads)
    os.unlink(f.name)
    os.unlink(empty.name)
    return max(wall - startup, 1e-9), rss, startup


def bert_cli_labels(binary, model_dir, texts, threads, extra=()):
    """Predicted labels, in input order."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([str(binary), "classify", "--quiet", "--model", str(model_dir), "--format", "tsv", *extra],
                         input="\n".join(texts) + "\n", capture_output=True, text=True, env=env, check=True).stdout
    return [line.split("\t")[1] for line in out.splitlines()[1:]]  # after the header


def matmul_peak(threads):
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for n in (2048, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        for _ in range(5):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def one_shot_python(model_dir, text):
    code = (
        "import torch\nfrom transformers import AutoTokenizer, AutoModelForSequenceClassification\n"
        f"t = AutoTokenizer.from_pretrained({str(model_dir)!r})\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}).eval()\n"
        f"with torch.inference_mode(): print(m.config.id2label[int(m(**t({text!r}, return_tensors='pt')).logits.argmax())])\n"
    )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="MiniLM only, smaller workloads, no batch-1 or int8-anchor runs")
    ap.add_argument("--label", default="bert-cli")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per timing, fastest kept, for every tool alike (this machine is noisy); "
                         "unsorted batches, slowest for every tool, run once")
    ap.add_argument("--models", default="minilm-l6,bert-base",
                    help="comma-separated; also " + ", ".join(FAMILY_BASES) + " (base-sized random models of "
                         "the other families)")
    ap.add_argument("--no-batch1", action="store_true", help="skip the batch-1 runs")
    ap.add_argument("--no-int8", action="store_true",
                    help="skip the int8 anchors (ONNX Runtime and PyTorch dynamic int8 against --quantize q8)")
    ap.add_argument("--workloads", default="sst2-dev,rt-snippets,exact-128,exact-512", help="comma-separated subset")
    ap.add_argument("--sorted-only", action="store_true",
                    help="only sorted batches of 32 (no unsorted runs), for the large models")
    ap.add_argument("--no-q8", action="store_true", help="skip bert-cli's --quantize q8 runs")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bf16 runs (bert-cli --dtype bf16 against PyTorch bf16 autocast)")
    ap.add_argument("--limit", type=int, default=0, help="the first N texts of each workload (0: all)")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXTURE)
    dev = sst2_dev()
    workloads = {
        "sst2-dev": dev,
        "rt-snippets": snippets(2000),
        "exact-128": exact_length(tok, 256, 128, 1),
        "exact-512": exact_length(tok, 64, 512, 2),
    }
    wanted = args.models.split(",")
    models = {"minilm-l6": FIXTURE} if "minilm-l6" in wanted else {}
    if not args.quick and "bert-base" in wanted:
        models["bert-base"] = bert_base_random()
    for name in FAMILY_BASES:
        if not args.quick and name in wanted:
            models[name] = family_base_random(name)
    if args.quick:
        workloads = {"sst2-dev": dev, "exact-128": workloads["exact-128"][:64]}
    workloads = {k: v for k, v in workloads.items() if k in args.workloads.split(",")}
    if args.limit:
        workloads = {k: v[:args.limit] for k, v in workloads.items()}
    peak = matmul_peak(args.threads)
    print(f"# bert-cli benchmark, {time.strftime('%Y-%m-%d')}, {args.threads} threads")
    print(f"# CPU: {cpu_description()}")
    print(f"# f32 matmul peak measured with PyTorch: {peak / 1e9:.0f} GFLOP/s")
    print("# throughput excludes model loading for every tool; bert-cli's start-up is timed separately")
    print(f"# each timing is the fastest of {args.repeat} runs, every tool once per round (unsorted batches: one run)")
    print()
    print(f"| model | workload | tool | config | sent/s | tok/s |")
    print(f"|---|---|---|---|---:|---:|")
    summary = []
    for mname, mdir in models.items():
        cfg = json.loads((Path(mdir) / "config.json").read_text())
        onnx_path = onnx_model(mdir, mname)
        int8 = not args.no_int8 and not args.quick
        onnx_int8 = onnx_int8_model(mname, onnx_path) if int8 and onnx_path is not None else None
        mtok = AutoTokenizer.from_pretrained(mdir)
        for wname, texts in workloads.items():
            lengths = [len(mtok(t, truncation=True, max_length=max_tokens(mdir))["input_ids"]) for t in texts]
            ntok = sum(lengths)
            results = {}

            def record(tool, config, seconds):
                results[(tool, config)] = seconds
                print(f"| {mname} | {wname} | {tool} | {config} | {len(texts) / seconds:.1f} | {ntok / seconds:.0f} |", flush=True)

            # Every timed configuration, one run of each per round; rounds repeat, fastest
            # kept. Interleaving puts each tool in the same stretches of this machine's
            # noise, where back-to-back repeats of one tool could catch a slow minute alone.
            plan = []
            variants = [("sorted b32", 32, True)] + ([] if args.sorted_only else [("unsorted b32", 32, False)])
            batch1 = not args.quick and not args.no_batch1 and wname == "sst2-dev"
            if batch1:
                variants.append(("b1", 1, False))
            for config, batch, sort in variants:
                once = not sort and batch != 1
                plan.append(("pytorch", config, once,
                             lambda b=batch, s=sort: run_pytorch(mdir, texts, b, s, args.threads)))
                if onnx_path is not None:
                    plan.append(("onnxruntime", config, once,
                                 lambda b=batch, s=sort: run_ort(mdir, onnx_path, texts, b, s, args.threads)))
            if int8:
                # The anchors of --quantize q8, in their fastest f32 configuration.
                plan.append(("pytorch", "int8 sorted b32", False,
                             lambda: run_pytorch(mdir, texts, 32, True, args.threads, int8=True)))
                if onnx_int8 is not None:
                    plan.append(("onnxruntime", "int8 sorted b32", False,
                                 lambda: run_ort(mdir, onnx_int8, texts, 32, True, args.threads)))
            bf16 = not args.no_bf16 and not args.quick
            if bf16:
                # The anchor of --dtype bf16: PyTorch's autocast, sorted batches of 32.
                plan.append(("pytorch", "bf16 sorted b32", False,
                             lambda: run_pytorch(mdir, texts, 32, True, args.threads, bf16=True)))
            plan.append((args.label, "b32", False, lambda: run_bert_cli(args.binary, mdir, texts, 32, args.threads)))
            if bf16:
                plan.append((args.label, "bf16 b32", False,
                             lambda: run_bert_cli(args.binary, mdir, texts, 32, args.threads, ["--dtype", "bf16"])))
            if not args.no_q8:
                plan.append((args.label, "q8 b32", False,
                             lambda: run_bert_cli(args.binary, mdir, texts, 32, args.threads, ["--quantize", "q8"])))
            if batch1:
                plan.append((args.label, "b1", False, lambda: run_bert_cli(args.binary, mdir, texts, 1, args.threads)))
                if bf16:
                    plan.append((args.label, "bf16 b1", False,
                                 lambda: run_bert_cli(args.binary, mdir, texts, 1, args.threads, ["--dtype", "bf16"])))
            runs = {}
            for r in range(args.repeat):
                for tool, config, once, run in plan:
                    if r == 0 or not once:
                        runs.setdefault((tool, config), []).append(run())
            for tool, config, _, _ in plan:
                got = runs[(tool, config)]
                record(tool, config, min(g[0] if isinstance(g, tuple) else g for g in got))
            cli_runs = runs[(args.label, "b32")]
            rss = max(r[1] for r in cli_runs)
            startup = min(r[2] for r in cli_runs)
            q8_secs = results.get((args.label, "q8 b32"), float("nan"))
            best = lambda tool: min((v for (t, c), v in results.items()
                                     if t == tool and "b1" != c.split()[-1] and c.split()[0] not in ("int8", "bf16", "q8")),
                                    default=float("nan"))
            nan = float("nan")
            ours = results[(args.label, "b32")]
            row = {
                "model": mname, "workload": wname,
                "vs_pytorch": best("pytorch") / ours, "vs_ort": best("onnxruntime") / ours,
                "rss_mb": rss / 1024, "peak_share": flops(cfg, lengths) / ours / peak, "startup": startup,
            }
            row["q8_secs"] = q8_secs
            row["q8_vs_pytorch"] = best("pytorch") / q8_secs
            row["q8_vs_ort_int8"] = results.get(("onnxruntime", "int8 sorted b32"), nan) / q8_secs
            row["q8_vs_pytorch_int8"] = results.get(("pytorch", "int8 sorted b32"), nan) / q8_secs
            row["bf16_secs"] = results.get((args.label, "bf16 b32"), nan)
            row["bf16_vs_pytorch_bf16"] = results.get(("pytorch", "bf16 sorted b32"), nan) / row["bf16_secs"]
            row["bf16_vs_own_f32"] = ours / row["bf16_secs"]
            row["pytorch_bf16_vs_f32"] = best("pytorch") / results.get(("pytorch", "bf16 sorted b32"), nan)
            if (args.label, "bf16 b1") in results:
                row["bf16_b1_sent"] = len(texts) / results[(args.label, "bf16 b1")]
            # Agreement of each tool's int8 with its own f32, on a real fine-tuned model
            # only: the fixture (a random head's scores are all near-ties).
            if wname == "sst2-dev" and mname == "minilm-l6":
                agree = lambda a, b: sum(x == y for x, y in zip(a, b)) / len(texts) if len(a) == len(b) == len(texts) else nan
                f32_labels = bert_cli_labels(args.binary, mdir, texts, args.threads)
                q8_labels = bert_cli_labels(args.binary, mdir, texts, args.threads, ["--quantize", "q8"])
                row["q8_agree"] = agree(f32_labels, q8_labels)
                if bf16:
                    bf_labels = bert_cli_labels(args.binary, mdir, texts, args.threads, ["--dtype", "bf16"])
                    row["bf16_agree"] = agree(f32_labels, bf_labels)
                    pt_f32, pt_bf16 = [], []
                    run_pytorch(mdir, texts, 32, False, args.threads, labels=pt_f32)
                    run_pytorch(mdir, texts, 32, False, args.threads, labels=pt_bf16, bf16=True)
                    row["pytorch_bf16_agree"] = agree(pt_f32, pt_bf16)
                if int8:
                    f32_labels, q8_labels = [], []
                    run_pytorch(mdir, texts, 32, False, args.threads, labels=f32_labels)
                    run_pytorch(mdir, texts, 32, False, args.threads, int8=True, labels=q8_labels)
                    row["pytorch_int8_agree"] = agree(f32_labels, q8_labels)
                    if onnx_int8 is not None:
                        f32_labels, q8_labels = [], []
                        run_ort(mdir, onnx_path, texts, 32, False, args.threads, labels=f32_labels)
                        run_ort(mdir, onnx_int8, texts, 32, False, args.threads, labels=q8_labels)
                        row["ort_int8_agree"] = agree(f32_labels, q8_labels)
            if (args.label, "b1") in results and ("onnxruntime", "b1") in results:
                row["b1_vs_ort_b1"] = results[("onnxruntime", "b1")] / results[(args.label, "b1")]
            summary.append(row)
    print()
    ratio = lambda v: "-" if v is None or math.isnan(v) else f"{v:.2f}x"
    pct = lambda v: "-" if v is None or math.isnan(v) else f"{100 * v:.2f}%"
    print(f"| model | workload | {args.label} / PyTorch best | / ONNX Runtime best | batch 1 / ORT batch 1 | peak RSS | share of matmul peak | start-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['model']} | {r['workload']} | {r['vs_pytorch']:.2f}x | {ratio(r['vs_ort'])} | "
              f"{ratio(r.get('b1_vs_ort_b1'))} | {r['rss_mb']:.0f} MB | {100 * r['peak_share']:.0f}% | "
              f"{r['startup']:.2f} s |")
    print()
    print("int8: bert-cli --quantize q8 against ONNX Runtime and PyTorch dynamic int8 (sorted batches of 32); "
          "agreement = int8 labels equal to the same tool's f32 labels, on SST-2 dev with the fine-tuned fixture")
    print()
    print("| model | workload | q8 sent/s | q8 / ORT int8 | q8 / PyTorch int8 | q8 / PyTorch f32 best | "
          "agreement: bert-cli q8 | ORT int8 | PyTorch int8 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        n = len(workloads[r["workload"]])
        print(f"| {r['model']} | {r['workload']} | {n / r['q8_secs']:.1f} | {ratio(r['q8_vs_ort_int8'])} | "
              f"{ratio(r['q8_vs_pytorch_int8'])} | {ratio(r['q8_vs_pytorch'])} | {pct(r.get('q8_agree'))} | "
              f"{pct(r.get('ort_int8_agree'))} | {pct(r.get('pytorch_int8_agree'))} |")
    print()
    print("bf16: bert-cli --dtype bf16 against PyTorch bf16 autocast (sorted batches of 32); agreement = bf16 "
          "labels equal to the same tool's f32 labels, on SST-2 dev with the fine-tuned fixture")
    print()
    print("| model | workload | bf16 sent/s | bf16 / PyTorch bf16 | bf16 / own f32 | PyTorch bf16 / its f32 | "
          "bf16 batch 1 sent/s | agreement: bert-cli bf16 | PyTorch bf16 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        n = len(workloads[r["workload"]])
        b1 = r.get("bf16_b1_sent")
        print(f"| {r['model']} | {r['workload']} | {n / r['bf16_secs']:.1f} | {ratio(r['bf16_vs_pytorch_bf16'])} | "
              f"{ratio(r['bf16_vs_own_f32'])} | {ratio(r['pytorch_bf16_vs_f32'])} | "
              f"{'-' if b1 is None else f'{b1:.1f}'} | {pct(r.get('bf16_agree'))} | "
              f"{pct(r.get('pytorch_bf16_agree'))} |")
    print()
    for mname, mdir in models.items():
        weights = Path(mdir) / "model.safetensors"
        text = "I didn't really enjoy this movie. It was fantastic!"
        cli = min(run_binary([args.binary, "classify", "--quiet", "--model", str(mdir), text], args.threads)[0] for _ in range(3))
        py = min(one_shot_python(mdir, text) for _ in range(2))
        print(f"cold one-shot, {mname}: {args.label} {cli:.2f} s, Python transformers {py:.2f} s "
              f"(ratio {py / cli:.1f}x); weights file {weights.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
