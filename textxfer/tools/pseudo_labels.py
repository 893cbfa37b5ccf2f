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
"""

from __future__ import annotations

from dataclasses import dataclass

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


def select(probs: np.ndarray, labels: list[str], per_class: int, lengths: np.ndarray | None = None,
           min_confidence: float = 0.0) -> Selection:
    """Per class, the `per_class` most confident texts predicted as that class (with `lengths`: spread evenly
    over their length quartiles), none below `min_confidence`."""
    probs = np.asarray(probs, dtype=np.float64)
    pred, conf = probs.argmax(1), probs.max(1)
    bins = _length_bins(lengths) if lengths is not None else np.zeros(len(probs), dtype=np.int64)
    n_bins = int(bins.max()) + 1 if len(bins) else 1
    chosen: list[np.ndarray] = []
    kept: dict[str, int] = {}
    threshold: dict[str, float | None] = {}
    for c, name in enumerate(labels):
        quota = _quotas(per_class, n_bins)
        picks = []
        for b in range(n_bins):
            cand = np.flatnonzero((pred == c) & (bins == b) & (conf >= min_confidence))
            picks.append(cand[np.argsort(-conf[cand], kind="stable")][: quota[b]])
        take = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        chosen.append(take)
        kept[name] = int(len(take))
        threshold[name] = float(conf[take].min()) if len(take) else None
    index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return Selection(index, pred[index], conf[index], kept, threshold)


def _quotas(total: int, n_bins: int) -> list[int]:
    """`total` split over `n_bins` as evenly as whole numbers allow (the first bins take the remainder)."""
    base, extra = divmod(total, n_bins)
    return [base + (1 if b < extra else 0) for b in range(n_bins)]


def _length_bins(lengths: np.ndarray) -> np.ndarray:
    """Each text's length quartile (0..3) among the unlabelled texts; fewer bins when lengths repeat a lot."""
    lengths = np.asarray(lengths, dtype=np.float64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right").astype(np.int64)


def class_mix(selection: Selection) -> str:
    """`negative 500, positive 500` for the log."""
    return ", ".join(f"{k} {v:,}" for k, v in selection.kept.items())
