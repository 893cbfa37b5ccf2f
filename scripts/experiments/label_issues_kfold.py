#!/usr/bin/env python3
"""Trial for `textxfer data issues` (issue 32): k-fold tuning, where every row's probabilities come from a body
and a head that never saw its label.

    .venv/bin/python scripts/experiments/label_issues_kfold.py --sets sst2 --seeds 3

On the slices of scripts/bench_label_issues.py (same draw, same flips): for each of `--folds` stratified folds a
body is tuned (one pass of fewshot.yaml's contrastive stage, as `data issues`) on the other folds and embeds every
row; the head is fitted on the other folds' embeddings and scores the fold. The penalty is chosen over
`--grid` by the out-of-fold log loss, cleanlab's rule `both` flags rows. Printed beside the default's figures
(`data issues`: one body on every row, a second tuned without the first ranking's flags), read from the benchmark's
embedding cache when it holds them. Tunings are cached in the same folder. Accuracy only: it may run beside other
jobs (one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_label_issues as bench  # noqa: E402

GRID = (100.0, 300.0, 1000.0, 3000.0, 10000.0)


def fold_parts(targets: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(targets)), targets)]


def kfold_features(overrides: list[str], texts: list[str], noisy: np.ndarray, parts: list[np.ndarray],
                   cache: Path, passes: int) -> list[np.ndarray]:
    """Per fold, every row embedded by a body tuned on the other folds (cached)."""
    from textxfer.config.reading import load_recipe
    from textxfer.tools.cross_fit import recipe_tuner
    from textxfer.tools.out_of_fold import read_training_rows

    out, tuner = [], None
    every = np.arange(len(noisy))
    for part in parts:
        key = hashlib.sha256("\0".join([f"kfold{passes}", *map(str, part.tolist()), *map(str, noisy.tolist()),
                                        *texts]).encode()).hexdigest()[:24]
        path = cache / f"{key}.npy"
        if not path.is_file():
            if tuner is None:
                r = load_recipe(str(bench.RECIPE), overrides)
                tuner = recipe_tuner(r, read_training_rows(r.data), passes)
            z = np.asarray(tuner(np.setdiff1d(every, part), [every])[0])
            cache.mkdir(parents=True, exist_ok=True)
            np.save(path, z)
        out.append(np.load(path))
    return out


def kfold_probabilities(features: list[np.ndarray], noisy: np.ndarray, parts: list[np.ndarray], n_classes: int,
                        l2: float, seed: int) -> np.ndarray:
    from textxfer.tools.out_of_fold import fit_head, head_probabilities

    every = np.arange(len(noisy))
    probs = np.zeros((len(noisy), n_classes))
    for k, (z, part) in enumerate(zip(features, parts, strict=True)):
        fit = np.setdiff1d(every, part)
        head = fit_head(z[fit], noisy[fit], l2, seed + k)
        probs[part] = head_probabilities(head, z[part], n_classes)
    return probs


def best(candidates: dict[float, np.ndarray], noisy: np.ndarray) -> tuple[float, np.ndarray]:
    from textxfer.tools.out_of_fold import log_loss

    l2 = min(candidates, key=lambda c: log_loss(candidates[c], noisy))
    return l2, candidates[l2]


def main() -> None:
    from textxfer.tools.label_issues import rank_issues
    from textxfer.tools.out_of_fold import out_of_fold_probabilities

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="sst2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "textxfer" / "bench-embeddings")
    p.add_argument("--out", type=Path, default=None, help="JSON lines, one per set and seed")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    embed = bench.embedder(a.cache_dir)
    lines, slices = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cut in bench.noisy_slices(a.sets, a.seeds, Path(tmp)):
            parts = fold_parts(cut.noisy, a.folds, 42)
            slices.append((cut.name, cut.seed, len(cut.labels), cut.texts, cut.noisy, cut.flipped, cut.overrides,
                           parts, kfold_features(cut.overrides, cut.texts, cut.noisy, parts, a.cache_dir, a.passes)))
        # every k-fold tuning first, then the default's embeddings (the benchmark may be caching them meanwhile)
        for name, seed, n, texts, noisy, flipped, overrides, parts, feats in slices:
            result = {"set": name, "seed": seed}
            cands = {l2: kfold_probabilities(feats, noisy, parts, n, l2, 42) for l2 in GRID}
            l2, probs = best(cands, noisy)
            result["kfold"] = bench.scores(rank_issues(noisy, probs), flipped) | {"head_l2": l2}
            for l2, pr in cands.items():
                result[f"kfold l2={l2:g}"] = bench.scores(rank_issues(noisy, pr), flipped)
            # the default's embeddings, when the benchmark cached them: the extended grid on them
            first = bench.slice_features(overrides, texts, noisy, a.passes, embed(texts), a.cache_dir)
            oof = {l2: out_of_fold_probabilities(first, noisy, n, a.folds, 42, l2) for l2 in GRID}
            l2f, pf = best(oof, noisy)
            flags = rank_issues(noisy, pf)
            result["first ranking, extended grid"] = bench.scores(flags, flipped) | {"head_l2": l2f}
            again = bench.slice_features(overrides, texts, noisy, a.passes, embed(texts), a.cache_dir, flags)
            oof2 = {l2: out_of_fold_probabilities(again, noisy, n, a.folds, 42, l2) for l2 in GRID}
            l2s, ps = best(oof2, noisy)
            result["retuned, extended grid"] = bench.scores(rank_issues(noisy, ps), flipped) | {"head_l2": l2s}
            l2m, pm = best({c: (oof2[c] + cands[c]) / 2 for c in GRID}, noisy)
            result["mean of retuned and kfold"] = bench.scores(rank_issues(noisy, pm), flipped) | {"head_l2": l2m}
            print(json.dumps(result), flush=True)
            lines.append(result)
    keys = [k for k in lines[0] if k not in ("set", "seed")]
    for name in a.sets.split(","):
        rs = [r for r in lines if r["set"] == name]
        for k in keys:
            f1 = [r[k]["f1"] for r in rs]
            print(f"{name:8s} {k:36s} F1 {np.mean(f1):.3f} ({', '.join(f'{x:.3f}' for x in f1)}) flagged "
                  f"{np.mean([r[k]['flagged'] for r in rs]):.0f}")
    if a.out:
        a.out.write_text("".join(json.dumps(r) + "\n" for r in lines))


if __name__ == "__main__":
    main()
