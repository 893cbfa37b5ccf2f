"""Scores computed from a run's saved predictions: confusion counts, per-class precision/recall/F1, mistakes.

They let the report show per-class results and a confusion matrix for any run that saved predictions, even
when metrics.json lacks them (older runs, interrupted runs), without loading the model again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from textxfer.outputs import plots
from textxfer.outputs.run_reading import SPLITS, Example, RunFiles


def confusion_counts(examples: Sequence[Example], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(counts, support): counts[t, p] over label indices and support[t] = examples whose true label is t.

    Single-label: counts[t, p] = examples with true t predicted p (rows sum to support).
    Multi-label: counts[t, t] = examples carrying t for which t was predicted; counts[t, p] (p != t) =
    examples carrying t for which p was predicted although p is not one of their true labels.
    """
    index = {name: i for i, name in enumerate(labels)}
    n = len(labels)
    counts = np.zeros((n, n), dtype=np.int64)
    support = np.zeros(n, dtype=np.int64)
    for e in examples:
        true = e.label if isinstance(e.label, tuple) else (e.label,)
        pred = e.pred if isinstance(e.pred, tuple) else (e.pred,)
        for t in true:
            support[index[t]] += 1
            for p in pred:
                if p == t or p not in true:
                    counts[index[t], index[p]] += 1
    return counts, support


def per_class_from_predictions(examples: Sequence[Example], labels: Sequence[str]) -> dict[str, dict]:
    """precision/recall/F1/support per label (zero where undefined, as scikit-learn's zero_division=0)."""
    tp = dict.fromkeys(labels, 0)
    fp = dict.fromkeys(labels, 0)
    fn = dict.fromkeys(labels, 0)
    for e in examples:
        true = set(e.label) if isinstance(e.label, tuple) else {e.label}
        pred = set(e.pred) if isinstance(e.pred, tuple) else {e.pred}
        for name in true & pred:
            tp[name] += 1
        for name in pred - true:
            fp[name] += 1
        for name in true - pred:
            fn[name] += 1
    out = {}
    for name in labels:
        p = tp[name] / (tp[name] + fp[name]) if tp[name] + fp[name] else 0.0
        r = tp[name] / (tp[name] + fn[name]) if tp[name] + fn[name] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": p, "recall": r, "f1": f, "support": tp[name] + fn[name]}
    return out


def per_class(run: RunFiles) -> dict[str, dict[str, dict]]:
    """Per split: label -> scores, from metrics.json where the trainer wrote them, else from the predictions."""
    out: dict[str, dict[str, dict]] = {}
    stored = (run.metrics or {}).get("per_class") or {}
    for split in SPLITS:
        table = stored.get(split)
        if isinstance(table, dict) and table:
            rows = {}
            for name, scores in table.items():
                if isinstance(scores, dict):
                    rows[str(name)] = {
                        "precision": scores.get("precision"),
                        "recall": scores.get("recall"),
                        "f1": scores.get("f1", scores.get("f1-score")),
                        "support": scores.get("support"),
                    }
            out[split] = rows
        elif run.examples.get(split):
            out[split] = per_class_from_predictions(run.examples[split], run.labels)
    return out


def mistakes(run: RunFiles) -> list[Example]:
    """Wrong validation and test examples, most confident first (confident mistakes are often label noise)."""
    wrong = [e for split in SPLITS for e in run.examples.get(split, []) if e.wrong]
    return sorted(wrong, key=lambda e: -e.confidence if math.isfinite(e.confidence) else math.inf)


def thresholds(run: RunFiles) -> list[float] | None:
    value = (run.metrics or {}).get("thresholds")
    if plots.is_number(value):
        return [float(value)] * len(run.labels)
    if isinstance(value, list) and len(value) == len(run.labels) and all(plots.is_number(v) for v in value):
        return [float(v) for v in value]
    return None
