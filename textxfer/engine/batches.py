"""How a global batch becomes a loss: its cut into per-process, per-accumulation-step shards, the class weights,
the per-example loss, and what the batch's summed example losses are divided by; and the batch arithmetic a run
reports when it starts (with a warning when it makes too few steps to learn).

These decide that a run's gradient does not depend on how many processes or accumulation steps share a batch, so
they live together, apart from the loop that calls them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

FEW_STEPS = 10
"""Fewer optimizer steps than this get a warning: a recipe made for thousands of examples, run on a few per class
(`data.examples_per_class`, `textxfer compare --examples-per-class`), keeps its epochs and batch size, and a head
trained for a couple of steps stays near chance."""


def shard(indices: list[int], accumulation: int, processes: int, rank: int) -> list[tuple[list[int], int]]:
    """This process's part of each micro-step of a global batch, as (indices, how many are real examples).

    The batch is cut into accumulation x processes contiguous pieces; micro-step m of process r takes piece
    m * processes + r. An empty piece (a batch smaller than the number of pieces) is one example at weight 0.
    """
    pieces = accumulation * processes
    bounds = [j * len(indices) // pieces for j in range(pieces + 1)]
    out = []
    for m in range(accumulation):
        j = m * processes + rank
        part = list(indices[bounds[j]:bounds[j + 1]])
        out.append((part, len(part)) if part else ([indices[0]], 0))
    return out


def class_weight_tensor(spec, labels: list[str], targets: np.ndarray) -> torch.Tensor | None:
    """The loss weight of each class from `training.class_weights`: none, `balanced` (inverse frequency in the
    training targets) or {label: weight} (unnamed labels weigh 1)."""
    if spec in (None, "none"):
        return None
    if spec == "balanced":
        counts = np.bincount(targets, minlength=len(labels)).astype(float)
        counts[counts == 0] = 1.0
        return torch.tensor(len(targets) / (len(labels) * counts), dtype=torch.float32)
    if isinstance(spec, dict):
        unknown = [k for k in spec if str(k) not in labels]
        if unknown:
            raise UserError(f"`training.class_weights` names unknown labels {unknown}; labels are {labels}.")
        return torch.tensor([float(spec.get(lab, spec.get(str(lab), 1.0))) for lab in labels])
    raise UserError("`training.class_weights` must be `none`, `balanced` or {label: weight}.")


def batch_weight(indices: list[int], class_weights: torch.Tensor | None, train_targets, multi_label: bool) -> float:
    """What a global batch's summed example losses are divided by: its size, or its summed class weights."""
    if class_weights is None or multi_label:
        return float(len(indices))
    targets = torch.as_tensor(np.asarray(train_targets)[indices], device=class_weights.device)
    return float(class_weights[targets].sum())


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool,
                        class_weights: torch.Tensor | None, reduction: str = "mean") -> torch.Tensor:
    """The mean loss, or with reduction `none` one (class-weighted) value per example: binary cross-entropy per
    label (averaged over the labels) for multi-label data, cross-entropy otherwise."""
    logits = logits.float()
    if multi_label:
        per_label = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
        return per_label.mean() if reduction == "mean" else per_label.mean(-1)
    return torch.nn.functional.cross_entropy(logits, targets, weight=class_weights, reduction=reduction)


def log_batch_plan(loop, micro: int) -> None:
    """Say how a global batch is cut (`micro`: examples per accumulation step over all processes) and how many
    optimizer steps the run makes; warn when they are too few to learn much."""
    t, n_proc = loop.recipe.training, loop.acc.num_processes
    if n_proc > 1:
        log.info(f"distributed: {n_proc} processes (num_processes: {n_proc}, {loop.acc.distributed_type.value}, "
                 f"backend {loop.acc.state.backend}); only process 0 writes files")
    log.info(f"batch: {t.batch_size} global = {micro // n_proc} per device x "
             f"{n_proc} processes x {t.gradient_accumulation_steps} accumulation; "
             f"{loop.steps_per_epoch} optimizer steps per epoch, {loop.total_steps} in all")
    if loop.total_steps < FEW_STEPS:
        log.warning(f"training makes only {loop.total_steps} optimizer step(s) ({len(loop.encoded['train'])} "
                    f"training examples, training.batch_size {t.batch_size}, training.epochs {t.epochs:g}): too "
                    f"few to learn much. Raise training.epochs or lower training.batch_size (recipes/fewshot.yaml "
                    f"trains its classifier for 30 epochs at batch 16).")
