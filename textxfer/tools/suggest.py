"""`textxfer suggest`: which unlabelled texts to label next, so that each label teaches the model the most.

A trained run scores a pool of unlabelled texts: its class probabilities (how unsure it is of each text) and the
embeddings its classifier reads (where each text lies). Labelling only the most uncertain texts tends to pick
near-duplicates from one confusing corner; labelling by spread alone ignores what the model already knows. The
default, `typiclust-margin`, combines both: the pool and the labelled texts are clustered (k-means, TypiClust:
Hacohen et al., 2022, "Active Learning on a Budget"), and from each cluster that labels cover least it takes the
text with the highest uncertainty times typicality (how dense the pool is around it), one per cluster, so the k
are spread over the pool and each is where the model is unsure; this suits the first few hundred labels, where
choosing by uncertainty alone does little better than random. `typiclust` takes the most typical text of each such
cluster (the model's uncertainty ignored). `badge` (Ash et al., 2020, "Deep Batch Active Learning by Diverse,
Uncertain Gradient Lower Bounds") represents each text by the gradient its label would give the last layer if the
model's own guess were right, (p - onehot(guess)) outer embedding, and picks by k-means++ seeding over those
vectors: uncertain and unlike each other. `margin` (the smallest gap between the two likeliest classes, top k)
and `least-confidence` are the plain uncertainty rankings, for comparison. docs/labelling.md has the measurements
behind the default and the alternatives. The run's labelled texts (`run_labelled`) leave the pool, and the
training ones are embedded so that TypiClust knows which clusters they cover (`choose(..., labelled=...)`).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textxfer.core.errors import UserError
from textxfer.tools.run_labelled import LabelledTexts

log = logging.getLogger("textxfer")

STRATEGIES = ("badge", "typiclust", "typiclust-margin", "margin", "least-confidence")
DEFAULT_STRATEGY = "typiclust-margin"
CSV_COLUMNS = ["text", "label", "score", "rank", "row"]
MAX_COVERAGE_TEXTS = 20_000
"""Labelled texts embedded for cluster coverage at most (a seeded sample beyond): where labels already lie."""


# ------------------------------------------------------------------------------------------ scores

def uncertainty(probs: np.ndarray, multi_label: bool = False, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Per text, how unsure the model is, in [0, 1]: 1 - (top probability - second) for one label per text; for
    multi-label models 1 - the smallest distance of a label's probability to its threshold (scaled to [0, 1])."""
    probs = np.asarray(probs, dtype=np.float64)
    if multi_label:
        t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        room = np.where(probs >= t, 1.0 - t, t)  # the furthest a probability can be from its threshold
        return 1.0 - (np.abs(probs - t) / np.maximum(room, 1e-12)).min(axis=1)
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top2 = -np.sort(-probs, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - the top probability (small-text's `LeastConfidence`)."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def gradient_factors(probs: np.ndarray, multi_label: bool = False,
                     thresholds: np.ndarray | None = None) -> np.ndarray:
    """The class factor of each text's last-layer gradient under its predicted label: p - onehot(argmax p) (for
    multi-label models p - [p >= threshold]); the gradient itself is this outer the text's embedding."""
    probs = np.asarray(probs, dtype=np.float64)
    if multi_label:
        t = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return probs - (probs >= t)
    guess = np.zeros_like(probs)
    guess[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    return probs - guess


def kmeans_plus_plus(factors: np.ndarray, embeddings: np.ndarray, k: int, seed: int) -> list[int]:
    """k indices by k-means++ seeding over the vectors factors[i] (outer) embeddings[i], without building them:
    |a x^T - b y^T|^2 = |a|^2 |x|^2 + |b|^2 |y|^2 - 2 (a.b)(x.y). The first is the longest vector (the most
    informative text), each next one drawn with probability proportional to its squared distance to the nearest
    one chosen (seeded)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(factors, dtype=np.float64)
    x = np.asarray(embeddings, dtype=np.float64)
    sq = (a * a).sum(1) * (x * x).sum(1)
    first = int(np.argmax(sq))
    chosen = [first]
    nearest = np.maximum(sq + sq[first] - 2.0 * (a @ a[first]) * (x @ x[first]), 0.0)
    nearest[first] = 0.0
    while len(chosen) < k:
        total = nearest.sum()
        if total <= 0:  # every text left is a duplicate of a chosen one: take the rest in order of length
            rest = [int(i) for i in np.argsort(-sq, kind="stable") if i not in set(chosen)]
            chosen += rest[:k - len(chosen)]
            break
        nxt = int(rng.choice(len(nearest), p=nearest / total))
        chosen.append(nxt)
        dist = np.maximum(sq + sq[nxt] - 2.0 * (a @ a[nxt]) * (x @ x[nxt]), 0.0)
        nearest = np.minimum(nearest, dist)
        nearest[nxt] = 0.0
    return chosen


def typicality(points: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / the mean Euclidean distance of each point to its `neighbours` nearest others (higher: a denser spot)."""
    x = np.asarray(points, dtype=np.float64)
    if len(x) < 2:
        return np.ones(len(x))
    sq = (x * x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    np.fill_diagonal(d, np.inf)
    k = max(1, min(neighbours, len(x) - 1))
    return 1.0 / (np.partition(d, k - 1, axis=1)[:, :k].mean(1) + 1e-8)


def typiclust(embeddings: np.ndarray, labelled: np.ndarray | None, k: int, seed: int, max_clusters: int = 500,
              neighbours: int = 20, min_cluster: int = 5, unsure: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """TypiClust (Hacohen et al., 2022, "Active Learning on a Budget"): k-means over the labelled and pool texts
    (L2-normalised) into (labelled + k) clusters, at most `max_clusters`; k times, the cluster with the fewest
    labelled texts (the largest among equals; clusters of fewer than `min_cluster` texts are outliers and skipped)
    gives its most typical pool text, the one closest on average to its `neighbours` nearest cluster mates.
    Returns (the k pool indices in the order chosen, each pool text's typicality)."""
    from sklearn.cluster import KMeans

    pool = _unit(embeddings)
    known = _unit(labelled) if labelled is not None and len(labelled) else np.zeros((0, pool.shape[1]))
    x = np.concatenate([known, pool])
    n_clusters = max(1, min(len(known) + k, max_clusters, len(x)))
    assign = KMeans(n_clusters, n_init=1, random_state=seed).fit_predict(x.astype(np.float32))
    known_of, pool_of = assign[:len(known)], assign[len(known):]
    typical = np.zeros(len(pool))
    for c in range(n_clusters):
        members = np.flatnonzero(assign == c)
        inside = members[members >= len(known)] - len(known)
        if len(inside):
            typical[inside] = typicality(x[members], min(neighbours, len(members) // 2))[members >= len(known)]
    size = np.bincount(assign, minlength=n_clusters)
    covered = np.bincount(known_of, minlength=n_clusters).astype(float)
    free = np.ones(len(pool), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < k:
        open_ = np.bincount(pool_of[free], minlength=n_clusters) > 0
        big = open_ & (size >= min_cluster)
        usable = big if big.any() else open_
        c = min(np.flatnonzero(usable), key=lambda j: (covered[j], -size[j], j))
        inside = np.flatnonzero(free & (pool_of == c))
        weight = typical[inside] / typical[inside].max()
        best = int(inside[np.argmax(weight if unsure is None else weight * unsure[inside])])
        chosen.append(best)
        free[best] = False
        covered[c] += 1
    return chosen, typical


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose(probs: np.ndarray, embeddings: np.ndarray, k: int, strategy: str = DEFAULT_STRATEGY, seed: int = 0,
           multi_label: bool = False, thresholds: np.ndarray | None = None,
           labelled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the k texts to label, in the order chosen; each text's score). `score` is the model's
    uncertainty for the uncertainty rankings and the length of the gradient vector for `badge` (both: higher =
    more to learn from); for `typiclust` and `typiclust-margin` it is the text's typicality (higher: a denser spot of
    the pool). `labelled`: embeddings of the texts already labelled (TypiClust counts which clusters they cover)."""
    n = len(probs)
    check_k(k, n)
    if strategy == "badge":
        factors = gradient_factors(probs, multi_label, thresholds)
        score = np.linalg.norm(factors, axis=1) * np.linalg.norm(embeddings, axis=1)
        return np.asarray(kmeans_plus_plus(factors, embeddings, k, seed)), score
    if strategy in ("typiclust", "typiclust-margin"):
        unsure = uncertainty(probs, multi_label, thresholds) if strategy == "typiclust-margin" else None
        order, score = typiclust(embeddings, labelled, k, seed, unsure=unsure)
        return np.asarray(order), score
    if strategy == "margin":
        score = uncertainty(probs, multi_label, thresholds)
    elif strategy == "least-confidence":
        score = least_confidence(probs)
    else:
        raise UserError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    return np.argsort(-score, kind="stable")[:k], score


def check_k(k: int, pool: int | None = None) -> None:
    """Refuse a k below 1, or above the usable texts of the pool (when known)."""
    if k <= 0:
        sizes = f" (the pool has {pool:,} usable text(s))" if pool else ""
        raise UserError(f"-k is {k}: ask for at least 1 text{sizes}.")
    if pool == 0:
        raise UserError("The pool has no usable text (it is empty, or every text is empty, repeated or already "
                        "labelled). Give a pool of unlabelled texts.")
    if pool is not None and pool < k:
        raise UserError(f"The pool has {pool:,} usable text(s), fewer than the {k:,} asked for (-k). Give a larger "
                        f"pool or ask for at most {pool:,}.")


# ------------------------------------------------------------------------------------------ the command

@dataclass
class Suggestion:
    """One text to label: its pool row (0-based, header not counted), text, score and 1-based rank."""

    row: int
    text: str
    score: float
    rank: int


def unique_texts(texts: list[str]) -> tuple[list[str], list[int], int, int]:
    """(texts stripped, their pool rows, empty rows dropped, repeated texts dropped): a repeated text keeps its first
    row, so the same text is never suggested twice."""
    seen: set[str] = set()
    kept, rows, empty, repeated = [], [], 0, 0
    for i, text in enumerate(texts):
        t = str(text).strip()
        if not t:
            empty += 1
        elif t in seen:
            repeated += 1
        else:
            seen.add(t)
            kept.append(t)
            rows.append(i)
    return kept, rows, empty, repeated


def suggest(model, texts: list[str], k: int, pairs: list[str] | None = None, strategy: str = DEFAULT_STRATEGY,
            seed: int = 0, batch_size: int = 64, labelled: LabelledTexts | None = None) -> list[Suggestion]:
    """The k texts of the pool that a saved model (a run directory, its model folder, or a loaded
    `textxfer.load(...)` classifier) would learn the most from, best first. `labelled`: the texts already labelled
    (`run_labelled.from_run` / `from_file`): they leave the pool, and cluster coverage counts the training ones."""
    from textxfer.modalities.text.embeddings import embed_texts
    from textxfer.modalities.text.predict import Classifier, load

    if strategy not in STRATEGIES:
        raise UserError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if k <= 0:
        check_k(k, len(texts))
    kept, rows, empty, repeated = unique_texts(texts)
    kept_pairs = [str(pairs[i]).strip() for i in rows] if pairs is not None else None
    if empty or repeated:
        log.info(f"pool: {len(kept):,} distinct texts ({empty:,} empty row(s) and {repeated:,} repeated text(s) "
                 "left out)")
    if labelled is not None:
        kept, rows, kept_pairs = _without_labelled(kept, rows, kept_pairs, labelled)
    check_k(k, len(kept))
    clf = model if isinstance(model, Classifier) else load(model)

    def embed(some: list[str], some_pairs: list[str] | None, logits: bool):
        return embed_texts(clf.model, clf.tokenizer, some, some_pairs, clf.max_length, with_logits=logits,
                           device=clf.device, max_batch=batch_size)

    embeddings, logits = embed(kept, kept_pairs, True)
    covered = None
    if labelled is not None and strategy.startswith("typiclust") and labelled.texts:
        texts_l, pairs_l = _coverage_sample(labelled, seed)
        covered, _ = embed(texts_l, pairs_l, False)
    import torch

    logits_t = torch.from_numpy(logits)
    probs = (logits_t.sigmoid() if clf.multi_label else logits_t.softmax(-1)).numpy()
    order, score = choose(probs, embeddings, k, strategy, seed, clf.multi_label, clf.thresholds, labelled=covered)
    return [Suggestion(rows[i], kept[i], float(score[i]), rank) for rank, i in enumerate(order.tolist(), 1)]


def _without_labelled(texts: list[str], rows: list[int], pairs: list[str] | None,
                      labelled: LabelledTexts) -> tuple[list[str], list[int], list[str] | None]:
    """The pool without the texts that are already labelled (a training, validation or test text, or one of a
    `--labelled` file; case and runs of spaces ignored, `sampling.loose_key`), the count per split said once."""
    from textxfer.data.sampling import loose_key, text_key

    known = {name: {loose_key(k) for k in keys} for name, keys in labelled.keys.items()}
    keep, found = [], dict.fromkeys(labelled.keys, 0)
    for i, text in enumerate(texts):
        key = loose_key(text_key(text, pairs[i] if pairs is not None else None))
        split = next((name for name, keys in known.items() if key in keys), None)
        if split is None:
            keep.append(i)
        else:
            found[split] += 1
    if len(keep) < len(texts):
        log.warning(f"pool: {len(texts) - len(keep):,} text(s) left out as already labelled "
                    f"({', '.join(f'{n:,} {split}' for split, n in found.items() if n)}; from {labelled.source})")
    return ([texts[i] for i in keep], [rows[i] for i in keep],
            [pairs[i] for i in keep] if pairs is not None else None)


def _coverage_sample(labelled: LabelledTexts, seed: int) -> tuple[list[str], list[str] | None]:
    """The training texts cluster coverage embeds: all of them, or a seeded sample of `MAX_COVERAGE_TEXTS`."""
    n = len(labelled.texts)
    if n <= MAX_COVERAGE_TEXTS:
        return labelled.texts, labelled.pairs
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:MAX_COVERAGE_TEXTS])
    log.info(f"coverage: a seeded sample of {MAX_COVERAGE_TEXTS:,} of the {n:,} labelled texts is embedded")
    return [labelled.texts[i] for i in idx], [labelled.pairs[i] for i in idx] if labelled.pairs is not None else None


def check_output(output: str | Path, overwrite: bool = False) -> Path:
    """The suggestions' CSV path, refused before any work when it is not a .csv, its folder is missing, or it
    exists without `overwrite` (a suggestions file may hold labels typed into it)."""
    path = Path(output)
    if path.suffix.lower() != ".csv":
        raise UserError(f"--output {path}: give a .csv file name (the suggestions are a CSV to label).")
    if path.parent and not path.parent.exists():
        raise UserError(f"--output {path}: the folder {path.parent} does not exist.")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists (labels typed into it would be lost). Pass --overwrite to replace it, or "
                        "--output NEW.csv.")
    return path


def write_suggestions(suggestions: list[Suggestion], output: str | Path, overwrite: bool = False) -> Path:
    """A CSV ready to label: text, an empty label column, score, rank, row (of the pool). An existing file is
    replaced only with `overwrite`, and then whole or not at all (a temporary file renamed)."""
    path = check_output(output, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=".suggest-", suffix=".csv", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for s in suggestions:
                w.writerow([s.text, "", f"{s.score:.6f}", s.rank, s.row])
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"Cannot write --output {path}: {e.strerror or e}. Choose a folder you can write to.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
