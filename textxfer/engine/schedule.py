"""What trains when: the head warm-up and gradual unfreezing, which gate the parameters of each optimizer step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from torch import nn

from textxfer.backbones.load import Parts
from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.engine.optim import depth_of

log = logging.getLogger("textxfer")


class Schedule:
    """Which parameters train at a given optimizer step: head warm-up, then the gradual unfreezing order.

    Parameters outside the current set get `requires_grad` off only for the duration of that step, so everything
    else (best-weight copies, checkpoints) always sees the full set of parameters the run trains."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int, model: nn.Module, parts: Parts, frozen_prefix: int):
        t, s = recipe.training, recipe.strategy
        self.last_described: str | None = None
        spe = max(steps_per_epoch, 1)
        self.warmup_steps = int(round(t.head_warmup_epochs * spe))
        self.gradual = s.name == "gradual"
        self.every = spe if s.unfreeze_every == "epoch" else int(s.unfreeze_every)
        n = len(parts.layers)
        self.n = n
        self.floor = frozen_prefix if self.gradual else 0
        self.params: list[tuple[str, nn.Parameter, int | None]] = []
        for name, p in model.named_parameters():
            if p.requires_grad:
                clean = name.removeprefix("base_model.model.")
                self.params.append((name, p, depth_of(parts.group_of(clean), n)))

    def groups_open(self, step: int) -> int | None:
        """How many layer groups (from the top) train at this step: 0 = head only; None = all the strategy trains."""
        if step < self.warmup_steps:
            return 0
        if not self.gradual:
            return None
        return min(1 + (step - self.warmup_steps) // self.every, self.n - self.floor)

    def describe(self, step: int) -> str:
        k = self.groups_open(step)
        if k is None:
            return "body and head"
        return "head only" if k == 0 else f"head + top {k} layer group(s)"

    def trains(self, depth: int | None, step: int) -> bool:
        k = self.groups_open(step)
        if k is None or depth is None:
            return True
        return depth < k

    @contextlib.contextmanager
    def gate(self, step: int) -> Iterator[None]:
        """Inside the block (one optimizer step), only what trains at `step` has `requires_grad`."""
        text = self.describe(step)
        if text != self.last_described:
            log.info(f"step {step}: training {text}")
            self.last_described = text
        off = [p for _, p, depth in self.params if not self.trains(depth, step)]
        for p in off:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in off:
                p.requires_grad_(True)


def new_schedule(recipe: Recipe, steps_per_epoch: int, model: nn.Module, parts: Parts, frozen_prefix: int,
                 num_processes: int) -> Schedule | None:
    """The head warm-up / gradual unfreezing schedule the loop gates each step with (`Schedule.gate`), or None
    when every step trains all that the strategy trains. `model`: unwrapped (no DDP or autocast wrapper)."""
    t, s = recipe.training, recipe.strategy
    if not t.head_warmup_epochs and s.name != "gradual":
        return None
    if num_processes > 1:
        raise UserError("`training.head_warmup_epochs` and strategy `gradual` change which parameters train during "
                        "the run, which DDP does not allow; train them with one process.")
    schedule = Schedule(recipe, steps_per_epoch, model, parts, frozen_prefix)
    if s.name == "gradual":
        log.info(f"strategy gradual: head + top layer group first, one more group every {schedule.every} steps "
                 f"(after {schedule.warmup_steps} head-only steps), down to layer {schedule.floor}")
    return schedule
