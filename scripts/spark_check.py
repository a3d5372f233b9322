#!/usr/bin/env python3
"""Runs examples/spark/classify_dataset.py in Spark local mode and checks it.

    scripts/spark-check [--no-baseline] [--report docs/spark-check.md]

The dataset is every case of the committed PyTorch reference (SST-2 dev plus the parity
edge cases: empty, control characters, a 3000-word text, ...) as Parquet with int ids.
Checks, each printed PASS/FAIL:
  - every id comes back exactly once;
  - label, score and every label's score equal a single-process `bert-cli classify` of the
    same records, bit for bit;
  - the same after one task's bert-cli is killed mid-run (Spark retries the task).
Then rows per second: the Spark job (local[2]), the single process, and the usual way
(transformers in a pandas_udf on the same executors and model), measured in this run.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / ".cache/fixtures/minilm-sst2"
BINARY = ROOT / "target/release/bert-cli"
JOB = ROOT / "examples/spark/classify_dataset.py"
MASTER = "local[2,4]"  # 2 cores; up to 4 attempts per task, so a killed task is retried


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            avx512 = " avx512f " in flags.replace("\n", " ")
            return line.split(":", 1)[1].strip() + (" (AVX-512)" if avx512 else " (no AVX-512)")
    return platform.processor()


def records():
    ref = json.loads((ROOT / "tests/fixtures/reference/minilm-sst2.json").read_text())
    return [{"id": i, "name": c["name"], "text": c["text"]} for i, c in enumerate(ref["cases"])]


def single_process(jsonl, env):
    t0 = time.perf_counter()
    out = subprocess.run([str(BINARY), "classify", "--quiet", "--model", str(FIXTURE),
                          "--input-format", "jsonl", "--field", "text", "--format", "jsonl",
                          "--all-scores", "--threads", "2", "--input", str(jsonl)],
                         capture_output=True, text=True, env=env, check=True).stdout
    seconds = time.perf_counter() - t0
    rows = {}
    for line in out.splitlines():
        obj = json.loads(line)
        p = obj["prediction"]
        rows[obj["id"]] = (p["label"], p["score"], p["scores"])
    return rows, seconds


def run_job(work, name, env, extra=()):
    out = work / name
    stats = work / f"{name}.json"
    cmd = [sys.executable, str(JOB), "--master", MASTER, "--input", str(work / "data.parquet"),
           "--id-column", "id", "--text-column", "text", "--binary", str(BINARY),
           "--model", str(FIXTURE), "--threads", "1", "--partitions", "4",
           "--output", str(out), "--stats", str(stats), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"spark-check: the job failed ({p.returncode}):\n{p.stderr[-4000:]}")
    import pandas as pd

    df = pd.read_parquet(out)
    return df, json.loads(stats.read_text())["seconds"], p.stderr


CHECKS = []


def check(name, ok, detail=""):
    line = f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}"
    print(line)
    CHECKS.append(line)
    return ok


def compare(df, want):
    ids = df["id"].tolist()
    once = len(ids) == len(set(ids)) == len(want) and set(ids) == set(want)
    diffs = 0
    for row in df.itertuples():
        label, score, scores = want[row.id]
        got_scores = dict(row.scores)
        if row.label != label or row.score != score or got_scores != scores:
            diffs += 1
    return once, diffs


def baseline(work, env):
    """transformers' text-classification pipeline in a pandas_udf, same data and cores."""
    code = f"""
import time, json
import pandas as pd
from pyspark.sql import SparkSession, functions as F
spark = SparkSession.builder.master("local[2]").appName("pandas_udf baseline").getOrCreate()
model_dir = {str(FIXTURE)!r}
_pipe = None
@F.pandas_udf("label string, score double")
def classify(texts: pd.Series) -> pd.DataFrame:
    global _pipe
    if _pipe is None:
        import torch
        from transformers import pipeline
        torch.set_num_threads(1)
        _pipe = pipeline("text-classification", model=model_dir, device=-1)
    out = _pipe(texts.tolist(), batch_size=32, truncation=True)
    return pd.DataFrame({{"label": [o["label"] for o in out], "score": [o["score"] for o in out]}})
df = spark.read.parquet({str(work / 'data.parquet')!r}).repartition(4)
t0 = time.perf_counter()
df.select("id", classify("text").alias("p")).select("id", "p.label", "p.score") \\
  .write.mode("overwrite").parquet({str(work / 'baseline')!r})
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
spark.stop()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(f"spark-check: pandas_udf baseline failed:\n{p.stderr[-3000:]}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])["seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-baseline", action="store_true", help="skip the pandas_udf timing")
    ap.add_argument("--report", type=Path, help="also write the results as Markdown here")
    args = ap.parse_args()
    import pandas as pd

    env = dict(os.environ)
    # Bitwise comparisons need results that do not depend on how records are batched: the
    # kernel path is batch-invariant; candle's path (CPUs without AVX-512) is not.
    env.setdefault("BERT_CLI_FORCE_KERNELS", "1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    work = Path(tempfile.mkdtemp(prefix="spark-check-"))
    recs = records()
    pd.DataFrame(recs).to_parquet(work / "data.parquet", index=False)
    jsonl = work / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    n = len(recs)

    want, single_s = single_process(jsonl, env)
    results = []
    ok = True
    df, spark_s, _ = run_job(work, "out", env)
    once, diffs = compare(df, want)
    ok &= check("every id exactly once", once, f"{len(df)} rows for {n} ids")
    ok &= check("labels and scores bitwise equal to one bert-cli process", diffs == 0,
                f"{diffs} of {n} differ")
    fault = work / "fault"
    fault.mkdir()
    df, _, _ = run_job(work, "out-fault", env, ["--inject-fault", str(fault)])
    killed = (fault / "killed-once").exists()
    once, diffs = compare(df, want)
    ok &= check("a killed task is retried: every id once, same results",
                killed and once and diffs == 0,
                f"killed={killed}, {len(df)} rows, {diffs} differ")
    base_s = None if args.no_baseline else baseline(work, env)

    lines = [f"Host: {cpu_name()}, {os.cpu_count()} cores. {n} records (SST-2 dev + edge cases), "
             f"all-MiniLM-L6-v2 fixture, Spark {MASTER}, 4 partitions, bert-cli --threads 1 per task.",
             "", "| run | seconds | rows/s |", "|---|---:|---:|",
             f"| Spark job, RDD.pipe through bert-cli | {spark_s:.1f} | {n / spark_s:.0f} |",
             f"| one bert-cli process, --threads 2 | {single_s:.1f} | {n / single_s:.0f} |"]
    if base_s:
        lines.append(f"| Spark job, transformers in a pandas_udf | {base_s:.1f} | {n / base_s:.0f} |")
        lines += ["", f"bert-cli on Spark vs the pandas_udf way: {base_s / spark_s:.2f}x (target >= 1.25x)"]
    text = "\n".join(lines)
    print(text)
    if args.report:
        checks = "\n".join(f"- {c}" for c in CHECKS)
        args.report.write_text(f"# scripts/spark-check\n\n{checks}\n\n{text}\n")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
