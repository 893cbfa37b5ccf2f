#!/usr/bin/env python3
"""Part 2 of ../shared/acceptance/V-every-label on its own: `textxfer data issues recipes/fewshot.yaml` on 2,000
SST-2 training sentences with 200 labels flipped (the check's own draw: random.Random(7)), F1 of the flagged rows.

    .venv/bin/python scripts/experiments/label_issues_acceptance.py [--keep DIR] [-- extra `data issues` options]
    .venv/bin/python scripts/experiments/label_issues_acceptance.py --keep DIR --embeddings-only 1

The data-making and scoring code is the check's, copied; the command is run as the check runs it (the project's
CLI from this virtual environment). Prints the command's summary line and `F1 <value>`; exits 1 below 0.6.
`--embeddings-only N` instead saves the rows' embeddings after N tuning passes (what `data issues --tune-passes N`
computes) to DIR/embeddings-N.npy, with the flipped rows in DIR/flipped.npy, so that heads and filter rules can be
compared on them without tuning again.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read(src: str, name: str) -> list[tuple[str, str]]:
    with open(os.path.join(src, name), encoding="utf-8", newline="") as f:
        return [(r["sentence"], ["negative", "positive"][int(r["label"])])
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def write(path: Path, header: list[str], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_data(t: Path) -> set[int]:
    """noisy.csv and dev.csv in `t` exactly as the check makes them; returns the flipped data rows."""
    src = os.path.join(os.environ["TEXTXFER_DATA"], "sst2")
    train, dev = read(src, "train.tsv"), read(src, "dev.tsv")
    write(t / "dev.csv", ["text", "label"], dev)
    rng = random.Random(7)
    rows = train[:]
    rng.shuffle(rows)
    rows = rows[:2000]
    flip = set(rng.sample(range(2000), 200))
    other = {"negative": "positive", "positive": "negative"}
    write(t / "noisy.csv", ["text", "label"], [(x, other[y] if i in flip else y) for i, (x, y) in enumerate(rows)])
    return flip


def f1_of(csv_path: Path, flipped: set[int]) -> tuple[float, float, float, int]:
    with open(csv_path, encoding="utf-8") as f:
        found = {int(r["row"]) for r in csv.DictReader(f)}
    tp = len(found & flipped)
    p, r = tp / max(len(found), 1), tp / len(flipped)
    return 2 * p * r / max(p + r, 1e-9), p, r, len(found)


def save_embeddings(t: Path, flipped: set[int], passes: int) -> None:
    import numpy as np

    from textxfer.config.reading import load_recipe
    from textxfer.tools.out_of_fold import read_training_rows, tuned_embeddings

    r = load_recipe(str(ROOT / "recipes/fewshot.yaml"), [
        "data.text_column=text", "data.label_column=label", "data.format=csv", "data.labels=null",
        "data.examples_per_class=null", "data.test=null", f"data.train={t / 'noisy.csv'}"])
    rows = read_training_rows(r.data)
    np.save(t / f"embeddings-{passes}.npy", tuned_embeddings(r, rows, passes))
    np.save(t / "targets.npy", rows.targets)
    np.save(t / "flipped.npy", np.asarray(sorted(flipped)))
    print(f"saved {t / f'embeddings-{passes}.npy'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, help="folder to keep the data and outputs in (default: a temporary one)")
    p.add_argument("--embeddings-only", type=int, default=None, metavar="PASSES")
    p.add_argument("extra", nargs="*", help="extra `textxfer data issues` options, after --")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = a.keep or Path(tmp)
        t.mkdir(parents=True, exist_ok=True)
        flipped = make_data(t)
        if a.embeddings_only is not None:
            save_embeddings(t, flipped, a.embeddings_only)
            return
        common = ["--set", "data.text_column=text", "--set", "data.label_column=label", "--set", "data.format=csv",
                  "--set", "data.labels=null", "--set", "data.examples_per_class=null", "--set",
                  f"data.test={t / 'dev.csv'}"]
        cmd = [str(Path(sys.executable).parent / "textxfer"), "data", "issues", str(ROOT / "recipes/fewshot.yaml"),
               *common, "--set", f"data.train={t / 'noisy.csv'}", "--set", "data.test=null",
               "--output-dir", str(t / "issues"), *a.extra]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[0] if done.stdout.strip() else done.stderr[-2000:])
        if done.returncode:
            sys.exit(f"data issues failed: {done.stderr[-2000:]}")
        f1, prec, rec, n = f1_of(t / "issues" / "label_issues.csv", flipped)
        print(f"flagged {n}, precision {prec:.3f}, recall {rec:.3f}, F1 {f1:.3f}")
        sys.exit(0 if f1 >= 0.6 else 1)


if __name__ == "__main__":
    main()
