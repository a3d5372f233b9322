#!/usr/bin/env python3
"""Classify a dataset on Apache Spark by piping each partition through the bert-cli binary.

    spark-submit examples/spark/classify_dataset.py \\
        --input reviews.parquet --text-column body --id-column review_id \\
        --binary target/release/bert-cli --model JeremiahZ/bert-base-uncased-sst2 \\
        --output labels.parquet

Each partition becomes JSON Lines (`{"id": ..., "text": ...}`), goes through
`bert-cli classify --input-format jsonl --field text --format jsonl` with `RDD.pipe`
(`checkCode=True`: a binary that fails fails the task, and Spark retries it), and the
carried-through objects are parsed into a Parquet dataset: id, label, score, scores (every
label's score), tokens, truncated, error. bert-cli answers in input order, one line per
record, so nothing needs re-joining.

Executors need no Python ML stack: only the binary (shipped with `SparkContext.addFile`)
and the model, either in a Hugging Face cache every executor can read (`--hf-cache`, run
offline) or downloaded once per executor into its local cache (`--download`).
"""

import argparse
import json
import os
import shlex
import sys
import time

from pyspark import SparkFiles
from pyspark.sql import SparkSession, functions as F, types as T


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="dataset: Parquet folder/file, CSV or JSONL")
    ap.add_argument("--input-format", choices=["parquet", "csv", "json"],
                    help="default: from the extension (.csv, .json/.jsonl), else parquet")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--output", required=True, help="Parquet output folder (overwritten)")
    ap.add_argument("--binary", default="bert-cli",
                    help="the bert-cli binary to ship to executors (built for their platform)")
    ap.add_argument("--model", default="JeremiahZ/bert-base-uncased-sst2",
                    help="hub repo id, or a folder every executor can read")
    ap.add_argument("--hf-cache", help="a Hugging Face cache every executor can read; runs offline")
    ap.add_argument("--download", action="store_true",
                    help="each executor fetches the model into its own cache first (needs the hub)")
    ap.add_argument("--threads", type=int,
                    help="bert-cli threads per task; default: spark.task.cpus (cores per task)")
    ap.add_argument("--partitions", type=int,
                    help="repartition to N first (a few per executor core keeps retries cheap)")
    ap.add_argument("--batch-size", type=int, help="passed to bert-cli --batch-size")
    ap.add_argument("--master", help="Spark master, when run without spark-submit (e.g. local[2])")
    ap.add_argument("--stats", help="write timing figures as JSON here")
    ap.add_argument("--inject-fault", metavar="DIR", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def read_dataset(spark, args):
    fmt = args.input_format
    if fmt is None:
        ext = os.path.splitext(args.input.rstrip("/"))[1].lower()
        fmt = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}.get(ext, "parquet")
    reader = spark.read
    if fmt == "csv":
        # Quoted fields may hold newlines; the header names the columns.
        reader = reader.option("header", True).option("multiLine", True).option("escape", '"')
    df = getattr(reader, fmt)(args.input)
    for col in (args.id_column, args.text_column):
        if col not in df.columns:
            sys.exit(f"classify_dataset: {args.input} has no column {col!r} (columns: {', '.join(df.columns)})")
    return df


def pipe_command(sc, args):
    """The command each task runs, and its environment (RDD.pipe passes no other)."""
    # Added files sit in the executor's working directory on a cluster; in local mode the
    # executor is the driver, which knows the path.
    local = sc.master.startswith("local")
    binary = SparkFiles.get(os.path.basename(args.binary)) if local else "./" + os.path.basename(args.binary)
    threads = args.threads or int(sc.getConf().get("spark.task.cpus", "1"))
    classify = [binary, "classify", "--quiet", "--model", args.model, "--input-format", "jsonl",
                "--field", "text", "--format", "jsonl", "--all-scores", "--threads", str(threads)]
    if args.batch_size:
        classify += ["--batch-size", str(args.batch_size)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    for var in ("BERT_CLI_FORCE_KERNELS", "BERT_CLI_PORTABLE", "HF_ENDPOINT", "HF_TOKEN"):
        if var in os.environ:
            env[var] = os.environ[var]
    if args.hf_cache:
        env["HF_HUB_CACHE"] = args.hf_cache
        classify.append("--offline")
    script = "exec " + shlex.join(classify)
    if args.download:
        # Once per executor in effect: later tasks find the files in the local cache.
        download = [binary, "download", "--quiet", args.model]
        script = shlex.join(download) + " >/dev/null && " + script
    if args.inject_fault:
        # The first task to get here starts bert-cli, lets it answer for a moment, then kills
        # it: Spark must retry the task and still keep every record exactly once.
        marker = shlex.quote(os.path.join(args.inject_fault, "killed-once"))
        script = (f"if mkdir {marker} 2>/dev/null; then "
                  f"{script[len('exec '):]} 0<&0 & pid=$!; sleep 1; kill -9 $pid; wait $pid; exit 137; "
                  f"else {script}; fi")
    return "sh -c " + shlex.quote(script), env


def result_schema(id_type):
    return T.StructType([
        T.StructField("id", id_type),
        T.StructField("label", T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("scores", T.MapType(T.StringType(), T.DoubleType())),
        T.StructField("tokens", T.IntegerType()),
        T.StructField("truncated", T.BooleanType()),
        T.StructField("error", T.StringType()),
    ])


def parse(line):
    """One bert-cli output line (the input object with "prediction" added) as a row."""
    obj = json.loads(line)
    p = obj.get("prediction", obj)
    return (obj.get("id"), p.get("label"), p.get("score"), p.get("scores"),
            p.get("tokens"), p.get("truncated"), p.get("error"))


def main(argv=None):
    args = parse_args(argv)
    builder = SparkSession.builder.appName("bert-cli classify")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    sc.addFile(os.path.abspath(args.binary))
    df = read_dataset(spark, args)
    id_type = df.schema[args.id_column].dataType
    # A missing text is classified as the empty text, so every id gets a row and bert-cli's
    # exit status only ever reports a real failure (which Spark then retries).
    records = df.select(F.col(args.id_column).alias("id"),
                        F.coalesce(F.col(args.text_column).cast("string"), F.lit("")).alias("text"))
    if args.partitions:
        records = records.repartition(args.partitions)
    command, env = pipe_command(sc, args)
    t0 = time.perf_counter()
    lines = records.toJSON().pipe(command, env=env, checkCode=True)
    out = spark.createDataFrame(lines.map(parse), result_schema(id_type))
    out.write.mode("overwrite").parquet(args.output)
    seconds = time.perf_counter() - t0
    rows = spark.read.parquet(args.output).count()
    print(f"classify_dataset: {rows} rows in {seconds:.1f} s ({rows / seconds:.0f} rows/s) -> {args.output}")
    if args.stats:
        with open(args.stats, "w") as f:
            json.dump({"rows": rows, "seconds": seconds}, f)
    spark.stop()


if __name__ == "__main__":
    main()
