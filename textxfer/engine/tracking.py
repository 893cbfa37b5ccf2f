"""Where a run reports its training: the loss and learning-rate records in the run's history and the experiment
trackers of `training.log_with` (TensorBoard, W&B...), started and ended with the run.
"""

from __future__ import annotations

import torch

from textxfer.config.schema import to_dict


def start_tracking(loop) -> None:
    """Start the recipe's trackers (none for `log_with: none`), with the recipe as their flat config."""
    if loop.recipe.training.log_with == "none":
        return
    from textxfer.engine.distributed import flat_config

    loop.acc.init_trackers("textxfer", config=flat_config(to_dict(loop.recipe)))


def end_tracking(loop) -> None:
    """Close the trackers (their files are complete after this)."""
    for tracker in loop.acc.trackers:
        tracker.finish()
    loop.acc.trackers = []


def log_train(loop, epoch: float, bar) -> None:
    """Record the mean training loss since the last record (summed over processes: the global batch loss); `bar`
    (a `ProgressReport`) shows it."""
    p = loop.state.progress
    total = torch.tensor([p.running], dtype=torch.float64, device=loop.acc.device)
    if loop.acc.num_processes > 1:
        total = loop.acc.reduce(total, reduction="sum")
    mean = float(total.item()) / max(p.seen, 1)
    lr = loop.scheduler.get_last_lr()[0]
    loop.state.history["train"].append({"step": p.step, "epoch": round(epoch, 4), "loss": mean, "learning_rate": lr})
    loop.acc.log({"train/loss": mean, "train/learning_rate": lr}, step=p.step)
    bar.note(loss=f"{mean:.4f}")
    p.running, p.seen = 0.0, 0
