"""From logits to what `predict` returns, the same for the PyTorch run directory and the exported model: per
input a list of {label, score}, the top k labels (single-label) or every label at or above its threshold
(multi-label), highest first."""

from __future__ import annotations

import numpy as np


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Softmax over labels, or each label's sigmoid (multi-label), in float32."""
    x = np.asarray(logits, dtype=np.float32)
    if multi_label:
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def decisions(probs: np.ndarray, labels: list[str], multi_label: bool, thresholds: np.ndarray | None,
              top_k: int = 1) -> list[list[dict]]:
    """Per row of `probs`, the chosen labels with their scores (see the module docstring)."""
    results = []
    limits = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
    for p in probs:
        if multi_label:
            chosen = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= limits[i]]
        else:
            chosen = [int(i) for i in np.argsort(-p, kind="stable")[: max(1, top_k)]]
        results.append([{"label": labels[i], "score": float(p[i])} for i in chosen])
    return results
