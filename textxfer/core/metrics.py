"""Metrics through the `evaluate` library, offline: textxfer ships its metric modules and loads them by
absolute path (a relative path that does not exist would be taken for a Hub id). `evaluate` is imported
lazily: it costs seconds, and `textxfer --help` should not pay for it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

MODULES = Path(__file__).parent / "metric_modules"


@cache
def load_metric(name: str):
    """A bundled module (`classification`, `multilabel`) by path; any other name goes to the Hub as usual."""
    import evaluate

    local = MODULES / f"{name}.py"
    return evaluate.load(str(local.resolve()) if local.is_file() else name)


def classification_metrics(preds: np.ndarray, refs: np.ndarray, labels: list[str]) -> tuple[dict, dict]:
    """(scalar metrics, per-class table {label: {precision, recall, f1, support}}) for single-label data."""
    out = load_metric("classification").compute(predictions=preds.tolist(), references=refs.tolist(),
                                                num_labels=len(labels))
    table = out.pop("per_class")
    per_class = {lab: {k: table[k][i] for k in ("precision", "recall", "f1", "support")}
                 for i, lab in enumerate(labels)}
    return out, per_class


def metric_names(multi_label: bool) -> list[str]:
    """The validation metrics a run records (what `training.metric` may name): the bundled module's scalars for
    single- or multi-label data, and `loss`. Read from the module itself on a two-example input."""
    if multi_label:
        names = multilabel_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]]), ["a", "b"])[0]
    else:
        names = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])[0]
    return sorted([*names, "loss"])


# ---------------------------------------------------------------------------------------------- multi-label

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Multi-label probabilities from logits: each label on its own."""
    return 1.0 / (1.0 + np.exp(-logits))


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str],
                       thresholds: float | np.ndarray = 0.5) -> tuple[dict, dict]:
    """(scalar metrics, per-label table) for multi-label data: a label is predicted when its sigmoid probability
    is >= its threshold (one float for all labels, or one per label).

    Scalars (see metric_modules/multilabel.py): `accuracy` = subset accuracy (the whole label set exactly right),
    `micro_f1`, `macro_f1`, `samples_f1`, micro/macro precision and recall, `hamming_loss`. The per-label table
    is {label: {precision, recall, f1, support, threshold}}."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets) > 0.5
    th = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    preds = probs >= th
    out = load_metric("multilabel").compute(predictions=preds.astype(np.int64).tolist(),
                                            references=targets.astype(np.int64).tolist())
    table = out.pop("per_class")
    per_class = {lab: {**{k: table[k][i] for k in ("precision", "recall", "f1", "support")},
                       "threshold": float(th[i])} for i, lab in enumerate(labels)}
    return out, per_class


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mode: str = "global") -> np.ndarray:
    """Decision thresholds (one per label, float32) tuned on validation probabilities over a 0.05..0.95 grid.

    `global`: one threshold for every label, the one with the best micro-F1. `per_label`: each label's own best
    F1; a label with no positive example in validation keeps the global threshold (nothing to tune on). Ties go
    to the threshold nearest 0.5, so flat regions do not drift to the grid's ends.

    `targets` may be probabilities: with `targets=probs` the F1 maximised is the one expected if every label applies
    with its predicted probability (`expected_f1_thresholds`)."""
    if mode not in ("global", "per_label"):
        raise ValueError(f"threshold mode must be 'global' or 'per_label', not {mode!r}")
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    grid = THRESHOLD_GRID
    positives = targets.sum(0)
    micro = np.empty(len(grid))
    per_label = np.empty((len(grid), probs.shape[1]))
    for g, t in enumerate(grid):
        pred = probs >= t
        tp = (pred * targets).sum(0)
        fp = (pred * (1.0 - targets)).sum(0)
        fn = positives - tp
        micro[g] = _f1_counts(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))[0]
        per_label[g] = _f1_counts(tp, fp, fn)
    closeness = -np.abs(grid - 0.5)

    def best(scores: np.ndarray) -> float:
        top = np.flatnonzero(np.isclose(scores, scores.max()))
        return float(grid[top[np.argmax(closeness[top])]])

    glob = best(micro)
    if mode == "global":
        return np.full(probs.shape[1], glob, dtype=np.float32)
    return np.array([best(per_label[:, j]) if positives[j] > 0 else glob for j in range(probs.shape[1])],
                    dtype=np.float32)


def expected_f1_thresholds(probs: np.ndarray) -> np.ndarray:
    """One threshold for every label, chosen without labelled held-out data: the one that maximises the micro-F1
    expected if each label applies with its predicted probability. For calibrated probabilities the best F1
    threshold is half the attainable F1 (Lipton et al. 2014), below 0.5: at 0.5 a calibrated few-shot classifier
    leaves most labels out."""
    return tune_thresholds(probs, probs, "global")
