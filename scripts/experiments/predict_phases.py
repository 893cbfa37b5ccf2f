"""Issue 30 diagnostic: where the time of a 10k-row prediction goes, streaming (`textxfer predict`) against today's
whole-input predict (`scripts/bench_predict.py`'s TODAY), each in a fresh process, alternating: model loading and
the prediction call, timed inside the process (no profiler), plus the whole process.

    python scripts/experiments/predict_phases.py RUN_DIR INPUT.csv [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

STREAM = """
import sys, time
t0 = time.perf_counter()
import textxfer.tools.predict as P
T = {}
def timed(name, f):
    def g(*a, **k):
        s = time.perf_counter(); r = f(*a, **k); T[name] = T.get(name, 0) + time.perf_counter() - s; return r
    return g
P.load_worker_model = timed("load", P.load_worker_model)
P.predict_chunk = timed("predict", P.predict_chunk)
from textxfer.cli.main import cli
cli(["predict", sys.argv[1], "--input", sys.argv[2], "--output", sys.argv[3], "--overwrite"], standalone_mode=False)
print(f"streaming  load {T['load']:5.2f} s  predict {T['predict']:6.2f} s  process {time.perf_counter() - t0:6.2f} s")
"""

TODAY = """
import csv, json, sys, time
t0 = time.perf_counter()
import textxfer
s = time.perf_counter(); clf = textxfer.load(sys.argv[1]); load = time.perf_counter() - s
with open(sys.argv[2], newline="", encoding="utf-8") as f:
    texts = [r["text"] for r in csv.DictReader(f)]
s = time.perf_counter(); results = clf.predict([t.strip() for t in texts]); pred = time.perf_counter() - s
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for t, r in zip(texts, results):
        f.write(json.dumps({"text": t, "label": r[0]["label"], "score": r[0]["score"]}) + "\\n")
print(f"today      load {load:5.2f} s  predict {pred:6.2f} s  process {time.perf_counter() - t0:6.2f} s")
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("input")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for _ in range(a.runs):
            for name, code in (("streaming", STREAM), ("today", TODAY)):
                out = Path(work) / f"{name}.jsonl"
                done = subprocess.run([sys.executable, "-c", code, a.run_dir, a.input, str(out)], check=True,
                                      capture_output=True, text=True)
                print(done.stdout.strip(), flush=True)
                out.unlink()


if __name__ == "__main__":
    main()
