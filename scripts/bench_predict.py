#!/usr/bin/env python
"""Prediction speed: textxfer's PyTorch predictor, `transformers.pipeline`, and the ONNX export in fp32 and int8,
same model, same SST-2 sentences; and with `--scale`, streaming `textxfer predict` on large inputs.

    python scripts/bench_predict.py --quick                   # 1,000 sentences, one run
    python scripts/bench_predict.py --run runs/sst2           # a trained run (int8 agreement means something)
    python scripts/bench_predict.py --scale                   # peak RSS at 10k and 1M rows, against today's predict

Rows (one per system): precision, model file size, throughput at batch 32 (the prediction call on all sentences,
tokenisation included, median of the repeats), latency at batch 1 (median and p95 over `--latency-texts` single
sentences), share of labels equal to the PyTorch predictor's, and ratios against the PyTorch predictor. The model
is `--run` (a run directory) or, by default, MiniLM-L6 with a seeded untrained two-label head: speed does not
depend on what the weights learnt, but int8 agreement does (an untrained head's margins are tiny), so give a
trained run for agreement figures. Every system is loaded and warmed up on 64 other sentences first.

Precision: the PyTorch predictor and the pipeline run fp32 (measured: the dtype the first Linear layer outputs);
the ONNX rows are fp32 and int8 weights with fp32 activations between layers (onnxruntime dynamic quantisation),
so the int8 row is a different precision by design and is labelled so. `--precision` is kept for the PyTorch
rows and refused where textxfer's predictor does not compute in it.

`--scale`: writes an SST-2-based CSV of each `--scale-rows` size (sentences repeated with a row number), then runs
`textxfer predict MODEL --input in.csv --output out.jsonl` (streaming) and today's whole-input prediction (read
every row, predict, write: what `textxfer predict` did before streaming) each in a fresh process, and reports
peak RSS (the child's ru_maxrss) and rows/s. Today's prediction runs only up to `--baseline-max-rows` rows; at those
sizes both systems run `--scale-repeats` times, alternating, and the ratios compare medians (one run's peak moves
by tens of MB).

Both modes print their rows and write them to `--out` (.txt and .json; default docs/results/bench_predict[-quick]
or bench_predict-scale).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402
    DATA,
    MODEL,
    PRECISIONS,
    compute_precision,
    precision_context,
    precision_name,
    read_tsv,
    resolve_precision,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def save_model(folder: Path, seed: int) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from textxfer.backbones.load import resolve_model_name

    path = resolve_model_name(MODEL)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)


def pipeline_call(pipe, precision: str, **kwargs):
    """`pipe(texts, **kwargs)` at `precision` (`bf16` or `no`): under bf16 autocast, or as it is."""
    def call(texts):
        with precision_context(precision):
            return pipe(texts, **kwargs)
    return call


def choose_precision(asked: str | None, textxfer_computes: str) -> str:
    """The precision of every system (`bf16` or `no`): what textxfer's predictor computes in (`fp32` or `bf16`,
    measured), or `asked` (`auto`, `bf16`, `no`) when it is the same; anything else is refused."""
    by_name = {precision_name(p): p for p in ("bf16", "no")}
    if textxfer_computes not in by_name:
        raise SystemExit(f"textxfer's predictor computes in {textxfer_computes}: the benchmark compares bf16 or fp32")
    ours = by_name[textxfer_computes]
    if asked is None:
        return ours
    wanted = resolve_precision(asked)
    if wanted != ours:
        raise SystemExit(f"--precision {asked} means {precision_name(wanted)} here, but textxfer's predictor "
                         f"(textxfer.load(...).predict) computes in {textxfer_computes} and has no precision setting: "
                         f"the pipeline rows would not be comparable. Run without --precision to compare at "
                         f"{textxfer_computes}.")
    return wanted


def labels_of(out) -> list[str]:
    return [o[0]["label"] if isinstance(o, list) else o["label"] for o in out]


def time_system(fn, texts: list[str], singles: list[str], repeats: int) -> dict:
    """Seconds of the whole call (median of `repeats`), per-sentence batch-1 latencies, and the labels."""
    whole = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn(texts)
        whole.append(time.perf_counter() - started)
    latencies = []
    for text in singles:
        started = time.perf_counter()
        fn([text])
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"seconds": statistics.median(whole), "labels": labels_of(out),
            "latency_median_ms": 1000 * statistics.median(latencies),
            "latency_p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}


def speed(a, work: Path) -> list[dict]:
    """The four systems' rows (see the module docstring)."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    import textxfer
    from textxfer.core.layout import find_model_dir
    from textxfer.outputs.onnx_export import export_run

    hf_logging.set_verbosity_error()
    n = a.sentences or (1000 if a.quick else 5000)
    repeats = a.repeats or (1 if a.quick else 3)
    rows = random.Random(a.seed).sample(read_tsv(DATA / "train.tsv"), n + 64 + a.latency_texts)
    texts, warm = [r[0] for r in rows[:n]], [r[0] for r in rows[n:n + 64]]
    singles = [r[0] for r in rows[n + 64:]]
    if a.run:
        model_dir = find_model_dir(a.run)
    else:
        model_dir = work / "model"
        save_model(model_dir, a.seed)
    for quantize in ("none", "int8"):
        export_run(a.run or model_dir, work / f"onnx-{quantize}", quantize=quantize)
    clf = textxfer.load(model_dir)
    pipe = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device=-1)
    computes = compute_precision(clf.model, lambda: clf.predict(warm[:8]))
    precision = choose_precision(a.precision, computes)
    onnx = {q: textxfer.load(work / f"onnx-{q}") for q in ("none", "int8")}
    b = a.batch_size
    systems = {
        "textxfer (PyTorch)": (lambda xs: clf.predict(xs, batch_size=b), precision_name(precision),
                               model_dir / "model.safetensors"),
        "pipeline": (pipeline_call(pipe, precision, truncation=True, batch_size=b), None,
                     model_dir / "model.safetensors"),
        "textxfer ONNX fp32": (lambda xs: onnx["none"].predict(xs, batch_size=b), "fp32", onnx["none"].file),
        "textxfer ONNX int8": (lambda xs: onnx["int8"].predict(xs, batch_size=b),
                               "int8 weights, fp32 activations", onnx["int8"].file),
    }
    results = []
    for name, (fn, label, file) in systems.items():
        if label is None:  # the pipeline: measured, as textxfer's
            label = compute_precision(pipe.model, lambda fn=fn: fn(warm))
        fn(warm)
        results.append({"system": name, "precision": label, "file_mb": file.stat().st_size / 1e6,
                        **time_system(fn, texts, singles, repeats)})
    if results[1]["precision"] != results[0]["precision"]:
        raise SystemExit(f"the PyTorch systems compute in different precisions ({results[0]['precision']}, "
                         f"{results[1]['precision']}): not comparable, stopping")
    base = results[0]
    reference = base["labels"]
    for r in results:
        r["sentences_per_s"] = n / r["seconds"]
        r["throughput_vs_pytorch"] = base["seconds"] / r["seconds"]
        r["latency_vs_pytorch"] = base["latency_median_ms"] / r["latency_median_ms"]
        r["smaller_than_pytorch"] = base["file_mb"] / r["file_mb"]
        r["same_label_as_pytorch"] = sum(x == y for x, y in zip(r.pop("labels"), reference, strict=True)) / n
    import onnxruntime
    import torch

    header = (f"bench_predict: {'run ' + str(a.run) if a.run else 'MiniLM-L6 (' + MODEL + '), untrained head'}, "
              f"{n} SST-2 sentences (seed {a.seed}), batch {b}, {a.latency_texts} batch-1 latencies, {repeats} "
              f"run(s); torch {torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__} (default "
              f"threads); load {os.getloadavg()[0]:.2f}")
    return [{"header": header}] + results


def format_speed(rows: list[dict]) -> list[str]:
    lines = [rows[0]["header"],
             f"{'system':<20} {'precision':<32} {'file MB':>8} {'sent/s b32':>10} {'x PyTorch':>9} "
             f"{'b1 median ms':>12} {'b1 p95 ms':>9} {'b1 x':>5} {'smaller':>7} {'same label':>10}"]
    for r in rows[1:]:
        lines.append(f"{r['system']:<20} {r['precision']:<32} {r['file_mb']:8.1f} {r['sentences_per_s']:10.0f} "
                     f"{r['throughput_vs_pytorch']:8.2f}x {r['latency_median_ms']:12.2f} {r['latency_p95_ms']:9.2f} "
                     f"{r['latency_vs_pytorch']:4.2f}x {r['smaller_than_pytorch']:6.2f}x "
                     f"{100 * r['same_label_as_pytorch']:9.2f}%")
    return lines


TODAY = """
import csv, json, sys
import textxfer
model, source, output = sys.argv[1:4]
clf = textxfer.load(model)
with open(source, newline="", encoding="utf-8") as f:
    texts = [r["text"] for r in csv.DictReader(f)]
results = clf.predict([t.strip() for t in texts])
with open(output, "w", encoding="utf-8") as f:
    for t, r in zip(texts, results):
        f.write(json.dumps({"text": t, "label": r[0]["label"], "score": r[0]["score"],
                            "labels": [x["label"] for x in r], "scores": [round(x["score"], 6) for x in r]}) + "\\n")
"""
"""Today's prediction before streaming: every row read, predicted in one call, then written (as cli/main.py did)."""


def measured(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {child.stderr.read().decode()[-1500:]}")
    return seconds, usage.ru_maxrss / 1024


def write_scale_input(path: Path, n: int) -> None:
    sentences = [r[0] for r in read_tsv(DATA / "train.tsv")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for i in range(n):
            w.writerow([f"{sentences[i % len(sentences)]} ({i})"])


def scale(a, work: Path) -> list[dict]:
    model = a.scale_model
    if model is None:
        raise SystemExit("--scale needs --scale-model RUN_DIR_OR_EXPORT (e.g. a run of recipes/sst2.yaml)")
    rows = []
    for n in a.scale_rows:
        source = work / f"in{n}.csv"
        write_scale_input(source, n)
        systems = {"streaming": [sys.executable, "-m", "textxfer", "predict", model, "--input", str(source),
                                 "--output", str(work / f"stream{n}.jsonl")]}
        if n <= a.baseline_max_rows:
            systems["today"] = [sys.executable, "-c", TODAY, model, str(source), str(work / f"today{n}.jsonl")]
        repeats = a.scale_repeats if n <= a.baseline_max_rows else 1
        for run in range(repeats):  # the systems alternate, so a change in the machine's load hits both alike
            for name, command in systems.items():
                seconds, rss = measured(command)
                out = work / f"{'stream' if name == 'streaming' else 'today'}{n}.jsonl"
                with open(out, encoding="utf-8") as f:
                    written = sum(1 for _ in f)
                if written != n:
                    raise SystemExit(f"{name} wrote {written} rows of {n}")
                rows.append({"system": name, "rows": n, "run": run, "seconds": seconds, "rows_per_s": n / seconds,
                             "peak_rss_mb": rss, "load": os.getloadavg()[0]})
                out.unlink()
        source.unlink()
    return [{"header": f"bench_predict --scale: {model}; load {os.getloadavg()[0]:.2f}"}] + rows + [scale_summary(rows)]


def scale_summary(rows: list[dict]) -> dict:
    """Peak RSS of the largest input over the smallest's, and streaming's rows/s over today's at each size where
    both ran: medians over the repeats of a size (the peak of one run moves by tens of MB)."""
    def median(system: str, n: int, key: str) -> float | None:
        values = [r[key] for r in rows if r["system"] == system and r["rows"] == n]
        return statistics.median(values) if values else None

    sizes = sorted({r["rows"] for r in rows})
    summary = {"rss_largest_over_smallest": median("streaming", sizes[-1], "peak_rss_mb")
               / median("streaming", sizes[0], "peak_rss_mb")}
    for n in sizes:
        today = median("today", n, "rows_per_s")
        if today:
            summary[f"throughput_vs_today_{n}"] = median("streaming", n, "rows_per_s") / today
    return summary


def format_scale(rows: list[dict]) -> list[str]:
    lines = [rows[0]["header"], f"{'system':<10} {'rows':>9} {'run':>4} {'seconds':>9} {'rows/s':>8} {'peak RSS MB':>11}"]
    for r in rows[1:-1]:
        lines.append(f"{r['system']:<10} {r['rows']:>9,} {r.get('run', 0):>4} {r['seconds']:9.1f} "
                     f"{r['rows_per_s']:8.0f} {r['peak_rss_mb']:11.0f}")
    lines.append("; ".join(f"{k} {v:.2f}x" for k, v in rows[-1].items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 sentences, one run")
    p.add_argument("--run", help="a trained run directory to benchmark (default: MiniLM-L6, untrained head)")
    p.add_argument("--sentences", type=int, help="how many SST-2 sentences (default 5000; 1000 with --quick)")
    p.add_argument("--repeats", type=int, help="runs per system, medians reported (default 3; 1 with --quick)")
    p.add_argument("--latency-texts", type=int, default=200, help="single sentences timed at batch 1")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of every system's throughput row")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the PyTorch rows' precision (default: the one textxfer's predictor computes in, fp32)")
    p.add_argument("--scale", action="store_true", help="streaming prediction on large inputs instead")
    p.add_argument("--scale-model", help="with --scale: the run directory or export to predict with")
    p.add_argument("--scale-rows", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 1_000_000],
                   help="with --scale: input sizes (default 10000,1000000)")
    p.add_argument("--baseline-max-rows", type=int, default=100_000,
                   help="with --scale: run today's whole-input prediction up to this many rows")
    p.add_argument("--scale-repeats", type=int, default=3,
                   help="with --scale: runs of each system at the sizes up to --baseline-max-rows, medians compared")
    p.add_argument("--out", help="result files PREFIX.txt and PREFIX.json (default under docs/results/)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="textxfer-bench-predict-") as tmp:
        rows = scale(a, Path(tmp)) if a.scale else speed(a, Path(tmp))
    lines = format_scale(rows) if a.scale else format_speed(rows)
    for line in lines:
        print(line, flush=True)
    prefix = Path(a.out) if a.out else RESULTS / ("bench_predict-scale" if a.scale else
                                                  "bench_predict-quick" if a.quick else "bench_predict")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
