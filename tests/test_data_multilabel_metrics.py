"""Multi-label metrics (through the shipped `evaluate` module) against scikit-learn, and threshold tuning.

Precision: float64 arithmetic on given probabilities; no model runs, so neither precision enters."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score

from textxfer.core.metrics import multilabel_metrics, tune_thresholds

LABELS = ["anger", "joy", "neutral", "fear"]


def sample(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(LABELS))) < [0.3, 0.4, 0.2, 0.05]).astype(np.float32)
    targets[:, 3] = 0  # `fear` never occurs: the zero-support edge case
    targets[:, 3][:2] = 1
    probs = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.5, 0, 1)
    return probs, targets


@pytest.mark.parametrize("thresholds", [0.5, np.array([0.3, 0.5, 0.7, 0.9])])
def test_multilabel_metrics_match_sklearn(thresholds):
    probs, targets = sample()
    metrics, per_class = multilabel_metrics(probs, targets, LABELS, thresholds)
    preds = (probs >= np.broadcast_to(thresholds, (len(LABELS),))).astype(int)
    y = targets.astype(int)
    kw = dict(zero_division=0)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, preds))
    assert metrics["micro_f1"] == pytest.approx(f1_score(y, preds, average="micro", **kw))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, preds, average="macro", **kw))
    assert metrics["samples_f1"] == pytest.approx(f1_score(y, preds, average="samples", zero_division=1))
    assert metrics["micro_precision"] == pytest.approx(precision_score(y, preds, average="micro", **kw))
    assert metrics["macro_recall"] == pytest.approx(recall_score(y, preds, average="macro", **kw))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(y, preds))
    f1s = f1_score(y, preds, average=None, **kw)
    for i, lab in enumerate(LABELS):
        assert per_class[lab]["f1"] == pytest.approx(f1s[i])
        assert per_class[lab]["support"] == int(y[:, i].sum())
        assert per_class[lab]["threshold"] == pytest.approx(float(np.broadcast_to(thresholds, (4,))[i]))


def test_perfect_and_empty_predictions():
    targets = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)
    m, _ = multilabel_metrics(targets.copy(), targets, ["a", "b"], 0.5)
    assert m["accuracy"] == 1.0 and m["micro_f1"] == 1.0 and m["samples_f1"] == 1.0
    m, _ = multilabel_metrics(np.zeros_like(targets), targets, ["a", "b"], 0.5)
    assert m["micro_f1"] == 0.0 and m["accuracy"] == pytest.approx(1 / 3)


def synthetic(n: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Label 0's positives score in [0.25, 0.45] and negatives below 0.2; label 1's positives above 0.8, negatives
    in [0.55, 0.75]: the best thresholds are ~0.2-0.25 and ~0.75-0.8, far from 0.5 in opposite directions."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, 3)) < 0.3).astype(np.float32)
    t[:, 2] = 0
    p = np.empty_like(t)
    p[:, 0] = np.where(t[:, 0] > 0, rng.uniform(0.25, 0.45, n), rng.uniform(0.0, 0.2, n))
    p[:, 1] = np.where(t[:, 1] > 0, rng.uniform(0.8, 1.0, n), rng.uniform(0.55, 0.75, n))
    p[:, 2] = rng.uniform(0, 1, n)
    return p, t


def test_tune_thresholds_per_label_finds_each_labels_cut():
    p, t = synthetic()
    th = tune_thresholds(p, t, "per_label")
    assert th.dtype == np.float32 and th.shape == (3,)
    assert 0.2 <= th[0] <= 0.25 and 0.75 <= th[1] <= 0.8
    glob = tune_thresholds(p, t, "global")
    assert np.all(glob == glob[0])
    assert th[2] == pytest.approx(glob[0])  # no positives: keeps the global threshold
    _, tuned = multilabel_metrics(p, t, ["a", "b", "c"], th)
    _, default = multilabel_metrics(p, t, ["a", "b", "c"], 0.5)
    assert tuned["a"]["f1"] == pytest.approx(1.0) and tuned["b"]["f1"] == pytest.approx(1.0)
    assert default["a"]["f1"] < 0.1 and default["b"]["f1"] < 0.7


def test_tune_thresholds_global_beats_default_and_rejects_bad_mode():
    p, t = synthetic()
    g = tune_thresholds(p[:, :2], t[:, :2], "global")
    at_g, _ = multilabel_metrics(p[:, :2], t[:, :2], ["a", "b"], g)
    at_half, _ = multilabel_metrics(p[:, :2], t[:, :2], ["a", "b"], 0.5)
    assert at_g["micro_f1"] > at_half["micro_f1"]
    with pytest.raises(ValueError, match="global"):
        tune_thresholds(p, t, "best")
