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
