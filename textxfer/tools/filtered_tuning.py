"""Tune the body again without the rows a first ranking flagged, for `textxfer data issues`.

Tuning the body on every row with its given label (`out_of_fold.tuned_embeddings`) separates the classes, which
is what lets the out-of-fold heads see a wrong label; but the wrong labels are among the labels it tunes on, and
each pulls its own row towards the wrong class, which hides some of the rows to be found. A first ranking on
those embeddings flags most of the wrong labels. A second body, tuned from the pretrained one on the rows that
were not flagged only, learns the classes from labels that are mostly right and embeds every row; the
out-of-fold heads and the ranking then run again on its embeddings. Flagged rows that were right lose nothing:
they are embedded and scored like every other row, only their labels did not tune the body
(docs/labelling.md measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textxfer.tools.cross_fit import Tuner

MIN_KEPT_PER_CLASS = 2
"""Rows of a class the second tuning needs at least (a contrastive pair of that class); with fewer left after
the first ranking, the second tuning is skipped."""


@dataclass
class Retuned:
    """Every row's embedding by a body tuned without the flagged rows."""

    features: np.ndarray
    """[rows, hidden], in row order."""
    held_out: np.ndarray
    """Sorted positions of the rows whose labels did not tune the body (the first ranking's flags)."""


def kept_rows(targets: np.ndarray, flagged: np.ndarray) -> np.ndarray | None:
    """Positions of the rows not flagged, or None when a class present would keep fewer than `MIN_KEPT_PER_CLASS`
    rows (the first ranking doubts nearly all of it: tuning without them would drop the class)."""
    keep = np.setdiff1d(np.arange(len(targets)), np.asarray(flagged, dtype=np.int64))
    present = np.bincount(targets) > 0
    kept = np.bincount(targets[keep], minlength=len(present))
    if np.any(present & (kept < MIN_KEPT_PER_CLASS)):
        return None
    return keep


def retuned_embeddings(targets: np.ndarray, flagged: np.ndarray, tune: Tuner) -> Retuned | None:
    """Tune a body with `tune` on the rows not in `flagged` and embed every row with it; None when `kept_rows`
    refuses (the caller keeps the first ranking)."""
    keep = kept_rows(targets, flagged)
    if keep is None:
        return None
    every = np.arange(len(targets))
    features = np.asarray(tune(keep, [every])[0])
    return Retuned(features, np.setdiff1d(every, keep))
