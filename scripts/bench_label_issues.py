#!/usr/bin/env python3
"""How well `textxfer data issues` finds label errors, and what removing them is worth.

    .venv/bin/python scripts/bench_label_issues.py                      # TREC-6, AG News, SST-2; 3 seeds
    .venv/bin/python scripts/bench_label_issues.py --sets sst2 --seeds 1 --rows 300   # a quick try

Per data set and seed: 2,000 training rows drawn at random (seeded, from the 10,000-row draw `pool_draw` that
scripts/bench_suggest.py also reads, so one cached embedding matrix serves both), 10% of their labels flipped
(seeded, each to one of the other classes uniformly), written to a CSV; `textxfer data issues` (its Python twin,
`find_issues` with `recipes/fewshot.yaml`, 5 folds, the embeddings of --tune-passes, cached) flags rows; flagged
rows are scored against the flipped ones (precision, recall, F1), and so are the variants on the same rows: each
fixed head_l2 of the grid and each of cleanlab's filter rules (`variants`). Then three classifiers are trained and scored on the data set's evaluation split: on the clean rows, on the
noisy rows, and on the noisy rows less the flagged ones; `recovered` = (without flagged - noisy) / (clean - noisy),
the share of the accuracy the noise cost that removing the flagged rows wins back.

The classifier of that comparison (--training): `head` (default) is fewshot.yaml's head, an L2-penalised logistic
regression (C = 1/head_l2) on the recipe's frozen mean-pooled MiniLM embeddings; `recipe` trains fewshot.yaml
itself (contrastive stage, then the head) through `textxfer.train`, about 10 minutes a run on two CPU cores.
Evaluation sets: SST-2 dev (872), TREC-6 test (500), AG News test (first 2,000 of a seeded shuffle).
Accuracy only (no timing), so it may run beside other jobs. Writes docs/results/bench_label_issues.{json,txt}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # a shared machine: one core for the linear algebra
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_accuracy import DATA, data_config  # noqa: E402

from textxfer.tools.label_issues import DEFAULT_TUNE_PASSES  # noqa: E402

SETS = ("trec", "agnews", "sst2")
RECIPE = ROOT / "recipes" / "fewshot.yaml"
EVAL_CAP = 2000
"""Evaluation rows at most (AG News has 7,600): a seeded shuffle's first rows."""
NOISE = 0.10
POOL, POOL_SEED = 10000, 2024
"""Training rows both labelling benchmarks draw from: `pool_draw`."""
FILTER_RULES = ("confident_learning", "prune_by_noise_rate", "prune_by_class", "both", "predicted_neq_given")
RESULTS = ROOT / "docs" / "results"


def dataset(name: str) -> dict:
    """{train_texts, train_labels, eval_texts, eval_labels, labels}: every training row (no few-shot draw) and the
    evaluation split, read by textxfer's own reader with the settings of scripts/bench_accuracy.py."""
    from textxfer.config.reading import load_recipe
    from textxfer.data.splits import load_splits

    cfg = load_recipe(data={"model": {"name": "x"}, "data": {**data_config(name), "validation_split": 0.0,
                                                               "examples_per_class": None}}).data
    splits = load_splits(cfg, 0)
    evaluation = splits.test
    idx = np.arange(len(evaluation))
    if len(idx) > EVAL_CAP:
        idx = np.sort(np.random.default_rng(12345).permutation(len(idx))[:EVAL_CAP])
    return {"train_texts": list(splits.train["text"]), "train_labels": np.asarray(splits.train["label"]),
            "eval_texts": [evaluation["text"][i] for i in idx.tolist()],
            "eval_labels": np.asarray(evaluation["label"])[idx], "labels": splits.labels}


def embedder(cache_dir: Path):
    """embed(texts) -> fewshot.yaml's pretrained embeddings (the fast path's features), cached on disk by the
    texts' hash so reruns and the other benchmark skip the model."""
    import hashlib

    from textxfer.config.reading import load_recipe
    from textxfer.tools.out_of_fold import recipe_embeddings

    recipe = load_recipe(RECIPE)

    def embed(texts: list[str]) -> np.ndarray:
        key = hashlib.sha256("\0".join([recipe.model.name, str(recipe.model.max_length), recipe.model.pooling,
                                        *texts]).encode()).hexdigest()[:24]
        path = cache_dir / f"{key}.npy"
        if path.is_file():
            return np.load(path)
        z = recipe_embeddings(recipe, texts, None, ["a", "b"])
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, z)
        return z
    return embed


def flip_labels(labels: np.ndarray, n_classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, sorted flipped positions): `share` of the rows, each moved to another class uniformly."""
    rng = np.random.default_rng([seed, 99])
    flipped = np.sort(rng.choice(len(labels), size=round(share * len(labels)), replace=False))
    noisy = labels.copy()
    shift = rng.integers(1, n_classes, size=len(flipped))
    noisy[flipped] = (labels[flipped] + shift) % n_classes
    return noisy, flipped


def head_accuracy(features: np.ndarray, y: np.ndarray, eval_features: np.ndarray, data: dict, seed: int) -> float:
    """fewshot.yaml's head on the frozen embeddings of the training rows, scored on the evaluation split."""
    from textxfer.config.reading import load_recipe
    from textxfer.tools.out_of_fold import fit_head, head_probabilities

    l2 = load_recipe(RECIPE).training.head_l2
    head = fit_head(features, y, l2, seed)
    probs = head_probabilities(head, eval_features, len(data["labels"]))
    return float((probs.argmax(1) == data["eval_labels"]).mean())


def recipe_accuracy(texts: list[str], y: np.ndarray, data: dict, seed: int, folder: Path) -> float:
    """fewshot.yaml trained on these rows through `textxfer.train`, scored on the evaluation split."""
    import pandas as pd

    import textxfer

    names = data["labels"]
    train = pd.DataFrame({"text": texts, "label": [names[j] for j in y]})
    test = pd.DataFrame({"text": data["eval_texts"], "label": [names[j] for j in data["eval_labels"]]})
    result = textxfer.train(str(RECIPE), [
        "data.text_column=text", "data.label_column=label", "data.labels=null", "data.examples_per_class=null",
        f"training.seed={seed}"], output_dir=folder, overwrite=True, train=train, test=test)
    return float(result.metrics["test"]["accuracy"])


def write_csv(path: Path, texts: list[str], labels: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels, strict=True))


def pool_draw(n_train: int, size: int = POOL) -> np.ndarray:
    """The rows of the training split both labelling benchmarks draw from (a seeded draw, sorted), so that one
    cached embedding matrix serves every slice of them."""
    return np.sort(np.random.default_rng(POOL_SEED).permutation(n_train)[:size])


def scores(flagged: np.ndarray, flipped: np.ndarray) -> dict:
    tp = len(np.intersect1d(flagged, flipped))
    precision, recall = tp / max(len(flagged), 1), tp / max(len(flipped), 1)
    return {"flagged": len(flagged), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def variants(features: np.ndarray, noisy: np.ndarray, n_classes: int, folds: int, seed: int, probs: np.ndarray,
             flipped: np.ndarray) -> dict:
    """F1 and friends of the alternatives to what `data issues` does, on the same rows: each head_l2 of the grid
    (confident learning on its out-of-fold probabilities), and each of cleanlab's filter rules on the
    probabilities `data issues` chose."""
    from textxfer.tools.label_issues import rank_issues
    from textxfer.tools.out_of_fold import HEAD_L2_GRID, out_of_fold_probabilities

    out = {}
    for l2 in HEAD_L2_GRID:
        p = out_of_fold_probabilities(features, noisy, n_classes, folds, seed, l2)
        loss = float(-np.log(np.clip(p[np.arange(len(noisy)), noisy], 1e-12, 1.0)).mean())
        out[f"head_l2={l2:g}"] = scores(rank_issues(noisy, p), flipped) | {"log_loss": loss}
    for rule in FILTER_RULES:
        out[f"filter={rule}"] = scores(rank_issues(noisy, probs, filter_by=rule), flipped)
    return out


def slice_features(recipe_overrides: list[str], texts: list[str], noisy: np.ndarray, passes: int,
                   pretrained: np.ndarray, cache_dir: Path, held_out: np.ndarray | None = None) -> np.ndarray:
    """The embeddings `data issues --tune-passes passes` reads: the pretrained ones for 0, else the body tuned on
    the noisy rows; with `held_out` (positions the first ranking flagged), the second body of `--retune`, tuned on
    the other rows (`filtered_tuning`). Cached by texts, labels, passes and rows held out: tuning is the slow part."""
    import hashlib

    if passes == 0:
        return pretrained
    held = [] if held_out is None else [f"held{i}" for i in np.sort(held_out).tolist()]
    key = hashlib.sha256("\0".join([f"tuned{passes}", *held, *map(str, noisy.tolist()), *texts]).encode())
    path = cache_dir / f"{key.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    from textxfer.config.reading import load_recipe
    from textxfer.tools.cross_fit import recipe_tuner
    from textxfer.tools.filtered_tuning import retuned_embeddings
    from textxfer.tools.out_of_fold import read_training_rows, tuned_embeddings

    r = load_recipe(str(RECIPE), recipe_overrides)
    rows = read_training_rows(r.data)
    if held_out is None:
        z = tuned_embeddings(r, rows, passes)
    else:
        again = retuned_embeddings(rows.targets, held_out, recipe_tuner(r, rows, passes))
        if again is None:
            raise SystemExit("the first ranking flagged nearly a whole class; `data issues` would not tune again")
        z = again.features
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, z)
    return z


@dataclass
class NoisySlice:
    """One seed's rows of a data set's pool with 10% of their labels flipped, written as the CSV `data issues`
    reads (`overrides` point fewshot.yaml at it)."""

    name: str
    seed: int
    labels: list[str]
    pick: np.ndarray
    """Positions in the pool."""
    texts: list[str]
    clean: np.ndarray
    noisy: np.ndarray
    flipped: np.ndarray
    csv: Path
    overrides: list[str]


def noisy_slice(name: str, labels: list[str], pool: dict, seed: int, rows: int, folder: Path) -> NoisySlice:
    """The seed's `rows` rows of the pool (`texts`, `labels`), labels flipped (`flip_labels`), written to `folder`."""
    rng = np.random.default_rng([seed, 7])
    pick = np.sort(rng.choice(len(pool["texts"]), size=min(rows, len(pool["texts"])), replace=False))
    texts = [pool["texts"][i] for i in pick.tolist()]
    clean = pool["labels"][pick]
    noisy, flipped = flip_labels(clean, len(labels), NOISE, seed)
    path = folder / f"{name}-{seed}.csv"
    write_csv(path, texts, [labels[j] for j in noisy])
    overrides = ["data.text_column=text", "data.label_column=label", "data.format=csv", "data.labels=null",
                 "data.examples_per_class=null", "data.test=null", f"data.train={path}"]
    return NoisySlice(name, seed, labels, pick, texts, clean, noisy, flipped, path, overrides)


def noisy_slices(sets: str, seeds: int, folder: Path, rows: int = 2000) -> Iterator[NoisySlice]:
    """Every seed's slice of each data set of `sets` (comma-separated), as the benchmark draws them: for trials on
    the same rows (scripts/experiments/label_issues_*.py)."""
    for name in sets.split(","):
        data = dataset(name)
        draw = pool_draw(len(data["train_texts"]))
        pool = {"texts": [data["train_texts"][i] for i in draw.tolist()], "labels": data["train_labels"][draw]}
        for seed in range(seeds):
            yield noisy_slice(name, data["labels"], pool, seed, rows, folder)


def one(name: str, data: dict, pool: dict, seed: int, rows: int, folds: int, passes: int, training: str,
        cache_dir: Path, work: Path, retune: bool) -> dict:
    from textxfer.tools.label_issues import find_issues

    cut = noisy_slice(name, data["labels"], pool, seed, rows, work)
    pick, texts, clean, noisy, flipped, overrides = cut.pick, cut.texts, cut.clean, cut.noisy, cut.flipped, cut.overrides
    names = data["labels"]
    features = slice_features(overrides, texts, noisy, passes, pool["features"][pick], cache_dir)
    found = find_issues(str(RECIPE), overrides, folds=folds, embeddings=features)
    first = None
    if passes and retune:  # `data issues --retune`: rank again on a body tuned without the rows flagged
        first = scores(np.asarray(sorted(i.row for i in found.issues), dtype=np.int64), flipped)
        held = np.asarray([i.row for i in found.issues], dtype=np.int64)
        features = slice_features(overrides, texts, noisy, passes, pool["features"][pick], cache_dir, held)
        found = find_issues(str(RECIPE), overrides, folds=folds, embeddings=features)
    assert found.targets is not None and found.probabilities is not None
    assert np.array_equal(found.targets, noisy), "the file read back carries the noisy labels in the same order"
    flagged = np.asarray(sorted(i.row for i in found.issues), dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(texts)), flagged)
    if training == "head":
        frozen = pool["features"][pick]

        def acc(idx, y):
            return head_accuracy(frozen[idx], y[idx], pool["eval_features"], data, seed)
    else:
        def acc(idx, y):
            return recipe_accuracy([texts[i] for i in idx], y[idx], data, seed, work / f"run-{name}-{seed}")
    everything = np.arange(len(texts))
    a_clean, a_noisy, a_kept = acc(everything, clean), acc(everything, noisy), acc(keep, noisy)
    lost = a_clean - a_noisy
    return {"set": name, "seed": seed, "rows": len(texts), "flipped": len(flipped), **scores(flagged, flipped),
            "head_l2": found.head_l2, "oof_accuracy": found.oof_accuracy,
            "acc_clean": a_clean, "acc_noisy": a_noisy, "acc_without_flagged": a_kept,
            "recovered": (a_kept - a_noisy) / lost if lost > 0 else None, "training": training,
            "tune_passes": passes, "retune": bool(passes and retune), "first_ranking": first,
            "variants": variants(features, noisy, len(names), folds, seed, found.probabilities, flipped)}


def summarise_variants(results: list[dict]) -> list[str]:
    names = list(results[0]["variants"])
    sets = list(dict.fromkeys(r["set"] for r in results))
    from textxfer.tools.label_issues import FILTER_BY

    lines = ["", "variants, mean F1 (flagged) over the seeds; `data issues` takes the head_l2 of the lowest log loss "
             f"and the rule {FILTER_BY}", f"{'variant':<32}" + "".join(f"{name:>16}" for name in sets)]
    for v in names:
        cells = []
        for name in sets:
            rs = [r["variants"][v] for r in results if r["set"] == name]
            cells.append(f"{np.mean([x['f1'] for x in rs]):9.3f} ({np.mean([x['flagged'] for x in rs]):4.0f})")
        lines.append(f"{v:<32}" + "".join(f"{c:>16}" for c in cells))
    chosen = [f"{name}: " + ", ".join(f"{r['head_l2']:g}" for r in results if r["set"] == name) for name in sets]
    lines.append("head_l2 chosen per seed: " + "; ".join(chosen))
    return lines


def summarise(results: list[dict]) -> list[str]:
    lines = [f"{'set':<8} {'seeds':>5} {'flagged':>8} {'precision':>9} {'recall':>7} {'F1':>6} {'acc clean':>9} "
             f"{'noisy':>7} {'w/o flagged':>11} {'recovered':>9}"]
    for name in dict.fromkeys(r["set"] for r in results):
        rs = [r for r in results if r["set"] == name]

        def m(key, rs=rs):
            return float(np.mean([r[key] for r in rs]))
        lost, won = m("acc_clean") - m("acc_noisy"), m("acc_without_flagged") - m("acc_noisy")
        recovered = f"{won / lost:9.2f}" if lost > 0 else f"{'n/a':>9}"
        lines.append(f"{name:<8} {len(rs):>5} {m('flagged'):8.0f} {m('precision'):9.3f} {m('recall'):7.3f} "
                     f"{m('f1'):6.3f} {m('acc_clean'):9.4f} {m('acc_noisy'):7.4f} {m('acc_without_flagged'):11.4f} "
                     f"{recovered}")
    firsts = [r for r in results if r.get("first_ranking")]
    if firsts:
        lines += ["", "the first ranking (before tuning again without its flags), mean over the seeds:"]
        for name in dict.fromkeys(r["set"] for r in firsts):
            rs = [r["first_ranking"] for r in firsts if r["set"] == name]
            lines.append(f"{name:<8} flagged {np.mean([r['flagged'] for r in rs]):5.0f} precision "
                         f"{np.mean([r['precision'] for r in rs]):.3f} recall {np.mean([r['recall'] for r in rs]):.3f} "
                         f"F1 {np.mean([r['f1'] for r in rs]):.3f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--tune-passes", type=int, default=DEFAULT_TUNE_PASSES,
                   help="`data issues --tune-passes` (0: the pretrained body; each pass costs a contrastive stage)")
    p.add_argument("--retune", action=argparse.BooleanOptionalAction, default=True,
                   help="`data issues --retune` (the default): with tuning passes, rank again on a body tuned "
                        "without the rows the first ranking flagged")
    p.add_argument("--training", choices=("head", "recipe"), default="head")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "textxfer" / "bench-embeddings")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_label_issues")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    embed = embedder(a.cache_dir)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.sets.split(","):
            data = dataset(name)
            draw = pool_draw(len(data["train_texts"]))
            pool_texts = [data["train_texts"][i] for i in draw.tolist()]
            pool = {"texts": pool_texts, "labels": data["train_labels"][draw], "features": embed(pool_texts),
                    "eval_features": embed(data["eval_texts"])}
            for seed in range(a.seeds):
                r = one(name, data, pool, seed, a.rows, a.folds, a.tune_passes, a.training, a.cache_dir, Path(tmp),
                        a.retune)
                results.append(r)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()
                                  if k != "variants"}), flush=True)
    lines = summarise(results) + summarise_variants(results)
    retuned = ", then tuned again without the rows flagged (--retune)" if a.tune_passes and a.retune else ""
    header = (f"label issues: {a.rows} rows per set, {NOISE:.0%} flipped, {a.folds} folds, {a.tune_passes} tuning "
              f"pass(es){retuned}, seeds 0-{a.seeds - 1}, accuracy of `{a.training}` training (data: {DATA})")
    text = "\n".join([header, *lines]) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".txt").write_text(text, encoding="utf-8")
    a.out.with_suffix(".json").write_text(json.dumps({"settings": vars(a) | {"cache_dir": str(a.cache_dir),
                                                                          "out": str(a.out)},
                                                      "results": results}, indent=1, default=str) + "\n",
                                          encoding="utf-8")


if __name__ == "__main__":
    main()
