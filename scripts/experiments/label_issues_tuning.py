#!/usr/bin/env python3
"""Trials for `textxfer data issues` (issue 32): how the body is tuned before the out-of-fold heads, and how far
tuning could go with perfect knowledge of the flipped rows.

    .venv/bin/python scripts/experiments/label_issues_tuning.py --variant without-flipped
    .venv/bin/python scripts/experiments/label_issues_tuning.py --variant hold-more --factors 1,1.5,2

On the slices of scripts/bench_label_issues.py (same draw, same flips; 2,000 rows, 10% flipped), one line per
seed: F1 of the rows cleanlab flags (rule `both`, the head's penalty chosen by out-of-fold log loss, as the
command does). The variants:

- `clean-labels`: one body tuned on the true labels, scored against the noisy ones. A ceiling that leaks the
  answer: the flipped rows' true labels tuned the body.
- `without-flipped`: one body tuned on every row but the flipped ones (the rest carry true labels): the second
  tuning of `--retune` had the first ranking found exactly the flipped rows.
- `hold-more`: the second body tuned without the `--factors` x (rows flagged first) rows least likely under their
  given label in the first ranking, instead of the flagged rows.
- `second-passes`: the second body tuned by `--passes` passes instead of one.
- `trim`: both tunings with a contrastive loss that leaves out, in each batch, the `--trim` share of examples
  whose pairs fit their given labels worst (the small-loss trick of co-teaching, Han et al. 2018).
- `overrides`: both tunings with the recipe overrides after `--` (e.g. `training.contrastive.loss=supcon`).
- `kfold-own-heads`: the k-fold bodies of scripts/experiments/label_issues_kfold.py (read from its cache; run it
  first), each row embedded by the body not tuned on its fold, and the heads kept inside each fold, so a head
  reads embeddings of rows its body did not see, as the row it scores.

Tunings are cached per variant under the benchmark's cache folder. Accuracy only (it times nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "experiments"))
import bench_label_issues as bench  # noqa: E402
from label_issues_heads import chosen  # noqa: E402

VARIANTS = ("clean-labels", "without-flipped", "hold-more", "second-passes", "trim", "overrides", "kfold-own-heads")


def trimmed_pair_loss(share: float):
    """The cosine pair loss of `engine.contrastive.pair_loss` without the `share` of each batch's examples whose
    pairs fit their labels worst (balanced over positive and negative pairs)."""
    import torch
    import torch.nn.functional as F

    from textxfer.engine.contrastive import same_label

    def loss(embeddings, targets, kind="cosine", temperature=0.1):
        z = F.normalize(embeddings.float(), dim=-1)
        sim = z @ z.T
        n = len(targets)
        same = same_label(targets)
        off = 1.0 - torch.eye(n, device=sim.device)
        err = (sim - same) ** 2
        pos, neg = same * off, (1.0 - same) * off
        fit = (err * pos).sum(1) / pos.sum(1).clamp(min=1) + (err * neg).sum(1) / neg.sum(1).clamp(min=1)
        keep = torch.ones(n, device=sim.device)
        drop = int(round(share * n))
        if drop:
            keep[torch.topk(fit.detach(), drop).indices] = 0.0
        w = keep[:, None] * keep[None, :]
        terms = [(err * m).sum() / m.sum() for m in (pos * w, neg * w) if m.sum() > 0]
        return torch.stack(terms).mean()
    return loss


def main() -> None:
    from textxfer.tools.label_issues import rank_issues
    from textxfer.tools.out_of_fold import best_out_of_fold

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--sets", default="sst2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--factors", default="1,1.5,2", help="hold-more: multiples of the first ranking's flag count")
    p.add_argument("--passes", type=int, default=2, help="second-passes: passes of the second tuning")
    p.add_argument("--trim", type=float, default=0.125, help="trim: share of each batch left out of the loss")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "textxfer" / "bench-embeddings")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("overrides", nargs="*", help="overrides: recipe overrides for both tunings")
    a = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    embed = bench.embedder(a.cache_dir)
    cache = a.cache_dir  # tunings of the default settings are the benchmark's own, shared
    if a.variant == "trim":
        import textxfer.engine.contrastive as contrastive

        contrastive.pair_loss = trimmed_pair_loss(a.trim)
        cache = a.cache_dir / f"trim-{a.trim:g}"
    elif a.variant == "overrides":
        cache = a.cache_dir / ("overrides-" + "-".join(a.overrides).replace("/", "_"))
    none = np.zeros(0, dtype=np.int64)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for cut in bench.noisy_slices(a.sets, a.seeds, Path(tmp)):
            name, seed, n = cut.name, cut.seed, len(cut.labels)
            texts, clean, noisy, flipped = cut.texts, cut.clean, cut.noisy, cut.flipped
            if a.variant == "clean-labels":  # the body is tuned on the true labels
                bench.write_csv(cut.csv, texts, [cut.labels[j] for j in clean])
            overrides = [*(a.overrides if a.variant == "overrides" else []), *cut.overrides]
            pretrained = embed(texts)

            def result(probs, name=name, seed=seed, noisy=noisy, flipped=flipped, **extra):
                flags = rank_issues(noisy, probs)
                row = {"set": name, "seed": seed, "variant": a.variant, **extra,
                       **({"overrides": a.overrides} if a.variant == "overrides" else {}),
                       "oof_accuracy": float((probs.argmax(1) == noisy).mean()), **bench.scores(flags, flipped)}
                print(json.dumps(row), flush=True)
                lines.append(row)

            if a.variant == "clean-labels":
                z = bench.slice_features(overrides, texts, clean, 1, pretrained, cache)
                result(chosen(z, noisy, n, 5, none)[1])
                continue
            if a.variant == "without-flipped":
                z = bench.slice_features(overrides, texts, noisy, 1, pretrained, cache, flipped)
                result(chosen(z, noisy, n, 5, none)[1])
                continue
            if a.variant == "kfold-own-heads":
                import label_issues_kfold as kfold

                parts = kfold.fold_parts(noisy, 5, 42)
                bodies = kfold.kfold_features(overrides, texts, noisy, parts, a.cache_dir, 1)
                z, groups = np.zeros_like(bodies[0]), np.zeros(len(noisy), dtype=np.int64)
                for k, part in enumerate(parts):
                    z[part], groups[part] = bodies[k][part], k
                result(best_out_of_fold(z, noisy, n, 5, 42, groups=groups)[0])
                continue
            z1 = bench.slice_features(overrides, texts, noisy, 1, pretrained, cache)
            p1 = chosen(z1, noisy, n, 5, none)[1]
            first = rank_issues(noisy, p1)
            if a.variant == "hold-more":
                least = np.argsort(p1[np.arange(len(noisy)), noisy], kind="stable")
                for factor in map(float, a.factors.split(",")):
                    held = np.sort(least[: int(round(factor * len(first)))])
                    z2 = bench.slice_features(overrides, texts, noisy, 1, pretrained, cache, held)
                    result(chosen(z2, noisy, n, 5, none)[1], factor=factor, held=len(held),
                           held_flipped=len(np.intersect1d(held, flipped)))
                continue
            passes = a.passes if a.variant == "second-passes" else 1
            z2 = bench.slice_features(overrides, texts, noisy, passes, pretrained, cache, first)
            result(chosen(z2, noisy, n, 5, none)[1], first_f1=bench.scores(first, flipped)["f1"])
    for name in a.sets.split(","):
        for factor in sorted({r.get("factor") for r in lines}, key=lambda f: f or 0):
            rs = [r for r in lines if r["set"] == name and r.get("factor") == factor]
            label = a.variant + ("" if factor is None else f" x{factor:g}")
            f1s = ", ".join(f"{r['f1']:.3f}" for r in rs)
            print(f"{name:8s} {label:28s} F1 {np.mean([r['f1'] for r in rs]):.3f} ({f1s}) flagged "
                  f"{np.mean([r['flagged'] for r in rs]):.0f} precision {np.mean([r['precision'] for r in rs]):.3f} "
                  f"recall {np.mean([r['recall'] for r in rs]):.3f}")
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)


if __name__ == "__main__":
    main()
