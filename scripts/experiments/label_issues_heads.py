#!/usr/bin/env python3
"""Trial for `textxfer data issues` (issue 32): what the out-of-fold heads learn from, on the embeddings the
default already computes.

    .venv/bin/python scripts/experiments/label_issues_heads.py --sets sst2 --seeds 3

On the slices of scripts/bench_label_issues.py (same draw, same flips), reading the two bodies' embeddings from
the benchmark's cache (run the benchmark first; nothing is tuned here): the default (`data issues`: the second
body's out-of-fold heads fitted on every row of the other folds) beside variants whose heads leave out of their
training folds the rows a ranking flagged (the rows are still scored), the two bodies' probabilities averaged,
and their embeddings joined. The penalty is chosen over the command's grid by out-of-fold log loss as the command
does; cleanlab's rule `both` flags rows. One more line ranks the default's rows by their given label's probability
and cuts at the count (100 to 400) of the best F1, which only knowing the flipped rows can choose: how much a
better estimate of the count could win. Accuracy only: it may run beside other jobs (one thread).
"""

from __future__ import annotations

import argparse
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

FOLD_SEED = 42
"""fewshot.yaml's training.seed: the folds `data issues` draws."""


def oof_without(features: np.ndarray, noisy: np.ndarray, n_classes: int, l2: float, left_out: np.ndarray,
                folds: int) -> np.ndarray:
    """Out-of-fold probabilities whose heads are fitted on the other folds less the rows in `left_out`."""
    from sklearn.model_selection import StratifiedKFold

    from textxfer.tools.out_of_fold import fit_head, head_probabilities

    probs = np.zeros((len(noisy), n_classes))
    drop = np.zeros(len(noisy), dtype=bool)
    drop[left_out] = True
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=FOLD_SEED)
    for k, (fit, held) in enumerate(splitter.split(features, noisy)):
        fit = fit[~drop[fit]]
        head = fit_head(features[fit], noisy[fit], l2, FOLD_SEED + k)
        probs[held] = head_probabilities(head, features[held], n_classes)
    return probs


def chosen(features: np.ndarray, noisy: np.ndarray, n_classes: int, folds: int, left_out: np.ndarray,
           loss_on: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(head_l2, probabilities) of the grid's penalty with the lowest out-of-fold log loss (on `loss_on` rows)."""
    from textxfer.tools.out_of_fold import HEAD_L2_GRID, log_loss

    rows = np.arange(len(noisy)) if loss_on is None else loss_on
    cands = {l2: oof_without(features, noisy, n_classes, l2, left_out, folds) for l2 in HEAD_L2_GRID}
    l2 = min(cands, key=lambda c: log_loss(cands[c][rows], noisy[rows]))
    return l2, cands[l2]


def main() -> None:
    from textxfer.tools.label_issues import rank_issues

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="sst2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "textxfer" / "bench-embeddings")
    p.add_argument("--out", type=Path, default=None, help="JSON lines, one per set and seed")
    a = p.parse_args()
    embed = bench.embedder(a.cache_dir)
    none = np.zeros(0, dtype=np.int64)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for cut in bench.noisy_slices(a.sets, a.seeds, Path(tmp)):
            name, seed, n = cut.name, cut.seed, len(cut.labels)
            texts, noisy, flipped, overrides = cut.texts, cut.noisy, cut.flipped, cut.overrides
            pretrained = embed(texts)
            z1 = bench.slice_features(overrides, texts, noisy, 1, pretrained, a.cache_dir)
            _, p1 = chosen(z1, noisy, n, a.folds, none)
            flags1 = rank_issues(noisy, p1)
            z2 = bench.slice_features(overrides, texts, noisy, 1, pretrained, a.cache_dir, flags1)
            l2, p2 = chosen(z2, noisy, n, a.folds, none)
            flags2 = rank_issues(noisy, p2)
            kept1 = np.setdiff1d(np.arange(len(noisy)), flags1)
            r = {"set": name, "seed": seed,
                 "first ranking": bench.scores(flags1, flipped),
                 "default (second body)": bench.scores(flags2, flipped) | {"head_l2": l2}}
            least = np.argsort(p2[np.arange(len(noisy)), noisy], kind="stable")
            cuts = {k: bench.scores(least[:k], flipped) for k in range(100, 401, 5)}
            best = max(cuts, key=lambda k: cuts[k]["f1"])
            r["default ranking, best count (knows the flips)"] = cuts[best]
            l2c, pc = chosen(z2, noisy, n, a.folds, flags1)
            r["heads without first flags"] = bench.scores(rank_issues(noisy, pc), flipped) | {"head_l2": l2c}
            l2k, pk = chosen(z2, noisy, n, a.folds, flags1, kept1)
            r["heads without first flags, loss on kept"] = (bench.scores(rank_issues(noisy, pk), flipped)
                                                            | {"head_l2": l2k})
            l2s, ps = chosen(z2, noisy, n, a.folds, flags2)
            r["heads without own flags"] = bench.scores(rank_issues(noisy, ps), flipped) | {"head_l2": l2s}
            r["mean of both bodies"] = bench.scores(rank_issues(noisy, (p1 + p2) / 2), flipped)
            l2j, pj = chosen(np.hstack([z1, z2]), noisy, n, a.folds, none)
            r["both bodies joined"] = bench.scores(rank_issues(noisy, pj), flipped) | {"head_l2": l2j}
            _, p0 = chosen(pretrained, noisy, n, a.folds, none)
            r["mean with pretrained"] = bench.scores(rank_issues(noisy, (p0 + p2) / 2), flipped)
            print(json.dumps(r), flush=True)
            lines.append(r)
    keys = [k for k in lines[0] if k not in ("set", "seed")]
    for name in a.sets.split(","):
        rs = [r for r in lines if r["set"] == name]
        for k in keys:
            f1 = [r[k]["f1"] for r in rs]
            print(f"{name:8s} {k:42s} F1 {np.mean(f1):.3f} ({', '.join(f'{x:.3f}' for x in f1)}) flagged "
                  f"{np.mean([r[k]['flagged'] for r in rs]):.0f} precision "
                  f"{np.mean([r[k]['precision'] for r in rs]):.3f} recall {np.mean([r[k]['recall'] for r in rs]):.3f}")
    if a.out:
        a.out.write_text("".join(json.dumps(r) + "\n" for r in lines))


if __name__ == "__main__":
    main()
