"""Which unlabelled texts a self-training round keeps, with which label: class-balanced, most confident first,
the confidence threshold of each class set by a count, never by test data.

The model of the round before gives every unlabelled text its class probabilities. Each class keeps at most
`per_class` of the texts predicted as it, the most confident first; the lowest kept confidence is that class's
threshold, which the run records. Keeping the same number per class stops the majority prediction from taking
over the training set, and a count (not a fixed probability) adapts to however sure of itself the model is, which
few-shot models are not reliably. With `balance_lengths` each class's quota is spread over the length quartiles of
the unlabelled texts, so the kept texts of every class are as long as the texts are: a model that is most sure of
long texts for one class and short ones for another would otherwise teach the next round to tell the classes
apart by length.

Data whose classes are far from equally common, and differ in length (spam), need the counts shared otherwise
(`quotas`: in a predicted class mix; `spread="predicted"`: over the lengths as each class's predictions are), or the
short quartiles of a long class fill with unsure predictions (docs/self-training.md compares them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

LENGTH_BINS = 4
"""Length quartiles over which `balance_lengths` spreads each class's quota."""


@dataclass
class Selection:
    """The texts a round keeps: their indices into the unlabelled texts, their pseudo-labels (class ids) and
    confidences, and per class how many were kept and the lowest kept confidence."""

    index: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    kept: dict[str, int]
    threshold: dict[str, float | None]

    def record(self, scored: int) -> dict:
        """The round's line in the run record: counts, class mix and thresholds."""
        return {"scored": scored, "kept": int(len(self.index)), "per_class": self.kept,
                "min_confidence": {k: (round(v, 4) if v is not None else None) for k, v in self.threshold.items()},
                "mean_confidence": round(float(self.confidence.mean()), 4) if len(self.index) else None}


def select(probs: np.ndarray, labels: list[str], per_class: int | list[int], lengths: np.ndarray | None = None,
           min_confidence: float = 0.0, spread: Literal["even", "predicted"] = "even") -> Selection:
    """Per class, the `per_class` most confident texts predicted as that class (one count for every class, or one
    per class: `quotas`), none below `min_confidence`. With `lengths`, each class's count is spread over the
    length quartiles of the texts: `even`, the same in each; `predicted`, as the texts predicted as that class are
    spread over them (a class whose texts are longer, such as spam, keeps long texts)."""
    probs = np.asarray(probs, dtype=np.float64)
    pred, conf = probs.argmax(1), probs.max(1)
    bins = _length_bins(lengths) if lengths is not None else np.zeros(len(probs), dtype=np.int64)
    n_bins = int(bins.max()) + 1 if len(bins) else 1
    chosen: list[np.ndarray] = []
    kept: dict[str, int] = {}
    threshold: dict[str, float | None] = {}
    counts = [per_class] * len(labels) if isinstance(per_class, int | np.integer) else list(per_class)
    for c, name in enumerate(labels):
        sure = (pred == c) & (conf >= min_confidence)
        if spread == "predicted":
            quota = _shares(int(counts[c]), np.bincount(bins[sure], minlength=n_bins))
        else:
            quota = _shares(int(counts[c]), np.ones(n_bins))  # as evenly as whole numbers allow
        picks = []
        for b in range(n_bins):
            cand = np.flatnonzero(sure & (bins == b))
            picks.append(cand[np.argsort(-conf[cand], kind="stable")][: quota[b]])
        take = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        chosen.append(take)
        kept[name] = int(len(take))
        threshold[name] = float(conf[take].min()) if len(take) else None
    index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return Selection(index, pred[index], conf[index], kept, threshold)


def quotas(per_class: int, shares: np.ndarray) -> list[int]:
    """Per class, its share of `per_class` x classes pseudo-labels (largest remainders, so they add up): with
    `class_quota: round0` the kept texts come in the class mix round 0's model predicted on the unlabelled texts,
    the mix the finished model is shifted to, instead of one count for every class."""
    return _shares(per_class * len(shares), shares)


def _shares(total: int, weights: np.ndarray) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders); all zeros when every weight is 0."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        return [0] * len(weights)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def _length_bins(lengths: np.ndarray) -> np.ndarray:
    """Each text's length quartile (0..3) among the unlabelled texts; fewer bins when lengths repeat a lot."""
    lengths = np.asarray(lengths, dtype=np.float64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right").astype(np.int64)


def class_mix(selection: Selection) -> str:
    """`negative 500, positive 500` for the log."""
    return ", ".join(f"{k} {v:,}" for k, v in selection.kept.items())
