#!/usr/bin/env python3
"""Part 2 of ../shared/acceptance/V-every-label on its own: `textxfer data issues recipes/fewshot.yaml` on 2,000
SST-2 training sentences with 200 labels flipped (the check's own draw: random.Random(7)), F1 of the flagged rows.

    .venv/bin/python scripts/experiments/label_issues_acceptance.py [--keep DIR] [-- extra `data issues` options]
    .venv/bin/python scripts/experiments/label_issues_acceptance.py --keep DIR --embeddings-only 1
    .venv/bin/python scripts/experiments/label_issues_acceptance.py --keep DIR --cross-fit-only 1
    .venv/bin/python scripts/experiments/label_issues_acceptance.py --keep DIR --variants 1
    .venv/bin/python scripts/experiments/label_issues_acceptance.py --keep DIR --retune-seeds 42,1,2 [--flags-from 0]

The data-making and scoring code is the check's, copied; the command is run as the check runs it (the project's
CLI from this virtual environment). Prints the command's summary line and `F1 <value>`; exits 1 below 0.6.
`--embeddings-only N` instead saves the rows' embeddings after N tuning passes (what `data issues --tune-passes N`
computes) to DIR/embeddings-N.npy, with the flipped rows in DIR/flipped.npy, so that heads and filter rules can be
compared on them without tuning again (without cross-fitting, as `data issues --no-cross-fit`).
`--cross-fit-only N` saves what cross-fitted tuning computes (`data issues --tune-passes N`, the default): the two
halves (DIR/halves-N.npz) and each half's body's embeddings of every row (DIR/body-N-H.npy, H = 0, 1: body H was
tuned on half H), and the pretrained embeddings (DIR/embeddings-0.npy) if missing. `--variants N` then scores, on
those files, the heads and combinations docs/labelling.md compares, each with its out-of-fold log loss against the
given labels (what a choice may read) beside its F1 (what it may not).
`--retune-seeds S,...` scores the second tuning of `data issues --retune` (`filtered_tuning`) per tuning seed
(`training.seed`; 42 is the recipe's, what the command does) and per fold seed (42-46): rows flagged on
DIR/embeddings-F.npy (F = --flags-from: 1, the body tuned on every row, as the command; 0, the pretrained body;
computed and saved if missing), a body tuned one pass without them (DIR/retuned-F-S.npy), out-of-fold heads again.
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

    from textxfer.tools.out_of_fold import read_training_rows, tuned_embeddings

    r = noisy_recipe(t)
    rows = read_training_rows(r.data)
    np.save(t / f"embeddings-{passes}.npy", tuned_embeddings(r, rows, passes))
    np.save(t / "targets.npy", rows.targets)
    np.save(t / "flipped.npy", np.asarray(sorted(flipped)))
    print(f"saved {t / f'embeddings-{passes}.npy'}")


def noisy_recipe(t: Path):
    from textxfer.config.reading import load_recipe

    return load_recipe(str(ROOT / "recipes/fewshot.yaml"), [
        "data.text_column=text", "data.label_column=label", "data.format=csv", "data.labels=null",
        "data.examples_per_class=null", "data.test=null", f"data.train={t / 'noisy.csv'}"])


def save_cross_fit(t: Path, flipped: set[int], passes: int) -> None:
    """The halves of `cross_fit.halves` (the recipe's seed, as the command) and each half's body's embeddings of
    every row: the command keeps only the other half's, the files keep all for the heads across halves."""
    import numpy as np

    from textxfer.tools.cross_fit import halves, recipe_tuner
    from textxfer.tools.out_of_fold import read_training_rows, recipe_embeddings

    r = noisy_recipe(t)
    rows = read_training_rows(r.data)
    np.save(t / "targets.npy", rows.targets)
    np.save(t / "flipped.npy", np.asarray(sorted(flipped)))
    if not (t / "embeddings-0.npy").exists():
        np.save(t / "embeddings-0.npy", recipe_embeddings(r, rows.texts, rows.pairs, rows.labels))
    parts = halves(rows.targets, r.training.seed)
    np.savez(t / f"halves-{passes}.npz", *parts)
    tune = recipe_tuner(r, rows, passes)
    every = np.arange(len(rows.texts))
    for h, fit in enumerate(parts):
        np.save(t / f"body-{passes}-{h}.npy", tune(fit, [every])[0])
        print(f"saved {t / f'body-{passes}-{h}.npy'}")


def variants(t: Path, passes: int, seed: int = 42, folds: int = 5) -> None:
    """F1 (rules both | confident_learning) and out-of-fold log loss of each head design on the saved files."""
    import numpy as np

    from textxfer.tools.label_issues import rank_issues
    from textxfer.tools.out_of_fold import (
        HEAD_L2_GRID,
        best_out_of_fold,
        fit_head,
        head_probabilities,
        log_loss,
    )

    y, flipped = np.load(t / "targets.npy"), set(np.load(t / "flipped.npy").tolist())
    with np.load(t / f"halves-{passes}.npz") as z:
        parts = [z[k] for k in sorted(z.files)]
    bodies = [np.load(t / f"body-{passes}-{h}.npy") for h in (0, 1)]
    crossed, groups = np.zeros_like(bodies[0]), np.zeros(len(y), dtype=np.int64)
    for h in (0, 1):
        crossed[parts[1 - h]], groups[parts[1 - h]] = bodies[h][parts[1 - h]], h

    def across(l2: float) -> np.ndarray:
        """Head fitted on body h's embeddings of its own half (the rows it was tuned on), scoring the other half."""
        p = np.zeros((len(y), 2))
        for h in (0, 1):
            head = fit_head(bodies[h][parts[h]], y[parts[h]], l2, seed)
            p[parts[1 - h]] = head_probabilities(head, bodies[h][parts[1 - h]], 2)
        return p

    def line(name: str, p: np.ndarray, note: str = "") -> None:
        out = []
        for rule in ("both", "confident_learning"):
            found = set(rank_issues(y, p, filter_by=rule).tolist())
            tp = len(found & flipped)
            prec, rec = tp / max(len(found), 1), tp / len(flipped)
            out.append(f"{rule} {len(found)} flagged p {prec:.3f} r {rec:.3f} F1 {2 * prec * rec / max(prec + rec, 1e-9):.3f}")
        print(f"{name:<34} log loss {log_loss(p, y):.4f} acc {(p.argmax(1) == y).mean():.3f} {note} | "
              + " | ".join(out), flush=True)

    within, l2w, _ = best_out_of_fold(crossed, y, 2, folds, seed, groups=groups)
    line("cross-fit, heads within halves", within, f"l2 {l2w:g}")
    for l2 in HEAD_L2_GRID:
        line(f"  within, l2 {l2:g}", best_out_of_fold(crossed, y, 2, folds, seed, grid=(l2,), groups=groups)[0])
    best_across = min(((across(l2), l2) for l2 in HEAD_L2_GRID), key=lambda pl: log_loss(pl[0], y))
    line("cross-fit, heads across halves", best_across[0], f"l2 {best_across[1]:g}")
    line("within + across", (within + best_across[0]) / 2)
    seeds = [best_out_of_fold(crossed, y, 2, folds, seed + s, groups=groups)[0] for s in range(5)]
    for s, p in enumerate(seeds[1:], 1):
        line(f"  within, fold seed {seed + s}", p)
    line("within, mean of 5 fold seeds", np.mean(seeds, 0))
    pre, l2p, _ = best_out_of_fold(np.load(t / "embeddings-0.npy"), y, 2, folds, seed)
    line("pretrained body", pre, f"l2 {l2p:g}")
    line("within + pretrained", (within + pre) / 2)
    if (t / f"embeddings-{passes}.npy").exists():
        plain, l2t, _ = best_out_of_fold(np.load(t / f"embeddings-{passes}.npy"), y, 2, folds, seed)
        line("tuned on every row (no cross-fit)", plain, f"l2 {l2t:g}")
        seeds = [best_out_of_fold(np.load(t / f"embeddings-{passes}.npy"), y, 2, folds, seed + s)[0]
                 for s in range(1, 5)]
        for s, p in enumerate(seeds, 1):
            line(f"  no cross-fit, fold seed {seed + s}", p)
        line("no cross-fit, mean of 5 fold seeds", np.mean([plain, *seeds], 0))
        line("within + pretrained + tuned on every row", (within + pre + plain) / 3)
        line("within + tuned on every row", (within + plain) / 2)


def retune_seeds(t: Path, flipped: set[int], seeds: list[int], flags_from: int, folds: int = 5) -> None:
    import numpy as np

    from textxfer.config.reading import load_recipe
    from textxfer.tools.cross_fit import recipe_tuner
    from textxfer.tools.filtered_tuning import retuned_embeddings
    from textxfer.tools.label_issues import rank_issues
    from textxfer.tools.out_of_fold import best_out_of_fold, out_of_fold_probabilities, read_training_rows

    r = noisy_recipe(t)
    rows = read_training_rows(r.data)
    y = rows.targets
    if not (t / f"embeddings-{flags_from}.npy").exists():
        save_embeddings(t, flipped, flags_from)

    def scored(probs) -> str:
        out = []
        for rule in ("both", "confident_learning"):
            found = set(rank_issues(y, probs, filter_by=rule).tolist())
            prec, rec = len(found & flipped) / max(len(found), 1), len(found & flipped) / len(flipped)
            out.append(f"({len(found)}, {2 * prec * rec / max(prec + rec, 1e-9):.3f})")
        return " ".join(out)
    probs, l2, loss = best_out_of_fold(np.load(t / f"embeddings-{flags_from}.npy"), y, 2, folds, r.training.seed)
    flags = rank_issues(y, probs)
    print(f"first ranking on embeddings-{flags_from}: l2 {l2:g}, log loss {loss:.4f}, (flagged, F1) both | "
          f"confident_learning {scored(probs)}; {len(set(flags.tolist()) & flipped)} of the {len(flags)} flagged "
          "are flipped", flush=True)
    for seed in seeds:
        path = t / f"retuned-{flags_from}-{seed}.npy"
        if not path.exists():
            rs = load_recipe(str(ROOT / "recipes/fewshot.yaml"), [
                "data.text_column=text", "data.label_column=label", "data.format=csv", "data.labels=null",
                "data.examples_per_class=null", "data.test=null", f"data.train={t / 'noisy.csv'}",
                f"training.seed={seed}"])
            again = retuned_embeddings(y, flags, recipe_tuner(rs, rows, 1))
            assert again is not None
            np.save(path, again.features)
        z = np.load(path)
        probs, l2, loss = best_out_of_fold(z, y, 2, folds, r.training.seed)
        cells = [f"fold seed {f}: {scored(out_of_fold_probabilities(z, y, 2, folds, f, l2))}" for f in range(42, 47)]
        print(f"tuning seed {seed}: l2 {l2:g}, log loss {loss:.4f}, accuracy {(probs.argmax(1) == y).mean():.3f} | "
              + " | ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=Path, help="folder to keep the data and outputs in (default: a temporary one)")
    p.add_argument("--embeddings-only", type=int, default=None, metavar="PASSES")
    p.add_argument("--cross-fit-only", type=int, default=None, metavar="PASSES")
    p.add_argument("--variants", type=int, default=None, metavar="PASSES")
    p.add_argument("--retune-seeds", default=None, metavar="S,...")
    p.add_argument("--flags-from", type=int, default=1, metavar="PASSES")
    p.add_argument("extra", nargs="*", help="extra `textxfer data issues` options, after --")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = a.keep or Path(tmp)
        t.mkdir(parents=True, exist_ok=True)
        flipped = make_data(t)
        if a.embeddings_only is not None:
            save_embeddings(t, flipped, a.embeddings_only)
            return
        if a.cross_fit_only is not None:
            save_cross_fit(t, flipped, a.cross_fit_only)
            return
        if a.variants is not None:
            variants(t, a.variants)
            return
        if a.retune_seeds is not None:
            retune_seeds(t, flipped, [int(x) for x in a.retune_seeds.split(",")], a.flags_from)
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
