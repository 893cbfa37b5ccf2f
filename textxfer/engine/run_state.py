"""What a training run has recorded about itself so far: where it stands (`Progress`), its history, the best
evaluation and its weights, the multi-label thresholds. One object, `Loop.state`, that the loop's evaluation,
checkpoint and resume helpers read and write, and that a checkpoint saves and a resume restores; the loop's
own attributes (model, data, optimizer) stay the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so that resume continues at the same batch."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """The epoch in progress (0-based)."""
    batch: int = 0
    """Global batches of `epoch` already trained on."""
    running: float = 0.0
    """Summed training loss since the last logged value (this process)."""
    seen: int = 0
    """Steps summed into `running`."""
    watch_best: float | None = None
    """Early stopping: the best value of its metric so far."""
    bad_evals: int = 0
    """Early stopping: evaluations in a row without an improvement of more than `min_delta`."""
    stopped_early: dict | None = None
    """Set when early stopping ended training: {"step", "epoch", "metric", "best"}."""


@dataclass
class RunState:
    """The run's record, as training goes."""

    progress: Progress = field(default_factory=Progress)
    history: dict[str, list] = field(default_factory=lambda: {"train": [], "eval": []})
    """Logged training losses ("train") and evaluations ("eval"); the contrastive stage adds its own."""
    best: dict | None = None
    """The best validation evaluation so far (a history entry)."""
    best_state: dict | None = None
    """The trainable weights at `best` (`best_weights`), None where not kept or already restored."""
    last_validation: tuple | None = None
    """(step, metrics, per-class table, logits) of the last validation evaluation, reused when it was the best."""
    thresholds: np.ndarray | None = None
    """Multi-label decision thresholds, one per label, once tuned or set."""
    fingerprints: dict[str, str] | None = None
    """The data's fingerprints per split, computed once (checkpoints record them; a resume compares them)."""
