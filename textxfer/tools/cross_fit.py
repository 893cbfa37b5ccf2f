"""Cross-fitted tuning for `textxfer data issues`: no row is embedded by a body that saw its label.

Tuning the body on every row with its given label (`out_of_fold.tuned_embeddings`) lets a wrong label pull its
own row towards the wrong class before the out-of-fold heads look at it, which hides the very rows to be found.
Cross-fitting splits the rows into two stratified, seeded halves, tunes one body on each half and embeds the other
half with it. The contrastive cost is the same as one tuning over all rows (each row is read once per pass).

The two bodies give two embedding spaces, so the heads stay inside one half: each half's rows get out-of-fold
probabilities from heads fitted on the other folds of the same half (`out_of_fold_probabilities` with `groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Tuner = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]
"""(positions to tune on, [positions to embed, ...]) -> one embedding array per list of positions to embed: a body
tuned on the first rows only, embedding the others (`recipe_tuner`; tests pass fakes)."""


@dataclass
class CrossFitted:
    """Embeddings of every row by the body that did not see its label."""

    features: np.ndarray
    """[rows, hidden]: row i embedded by the body tuned on the half without row i."""
    groups: np.ndarray
    """[rows]: which body (0 or 1: the half it was tuned on) embedded each row; the heads keep groups apart."""
    parts: list[np.ndarray]
    """The two halves, as sorted row positions: body h was tuned on `parts[h]` and embedded `parts[1 - h]`."""


def halves(targets: np.ndarray, seed: int) -> list[np.ndarray]:
    """Two disjoint halves covering every row, each with about half of every class (stratified, seeded)."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(targets)), targets)]


def can_cross_fit(targets: np.ndarray, folds: int) -> bool:
    """Whether every class present has rows enough for `folds` folds inside each half (2 x folds rows)."""
    counts = np.bincount(targets)
    return bool(np.all(counts[counts > 0] >= 2 * folds))


def cross_fitted_embeddings(targets: np.ndarray, tune: Tuner, seed: int) -> CrossFitted:
    """Tune a body on each half with `tune` and embed the other half with it (see the module's docstring)."""
    parts = halves(targets, seed)
    features: np.ndarray | None = None
    groups = np.full(len(targets), -1, dtype=np.int64)
    for h, fit in enumerate(parts):
        other = parts[1 - h]
        embedded = np.asarray(tune(fit, [other])[0])
        if features is None:
            features = np.zeros((len(targets), embedded.shape[1]), dtype=embedded.dtype)
        features[other] = embedded
        groups[other] = h
    assert features is not None and np.all(groups >= 0)
    return CrossFitted(features, groups, parts)


def recipe_tuner(recipe, rows, passes: int, device: str | None = None) -> Tuner:
    """The `Tuner` of a recipe: `passes` passes of its contrastive stage over the rows tuned on
    (`out_of_fold.tune_and_embed`)."""
    from textxfer.tools.out_of_fold import tune_and_embed

    def tune(fit: np.ndarray, embed: list[np.ndarray]) -> list[np.ndarray]:
        return tune_and_embed(recipe, rows, fit, embed, passes, device)
    return tune
