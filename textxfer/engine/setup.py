"""Setting a run up before any model is built: the Accelerator (with Accelerate's per-process state reset so a
process can train again), logging to stderr and train.log, and the guard that never lets a new run overwrite a
finished or interrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.core.precision import effective_mixed_precision, warn_if_emulated
from textxfer.engine import checkpoint

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger("textxfer")


def setup_logging(output_dir: Path | None, is_main: bool, append: bool = False) -> None:
    """Progress on stderr (main process only; the others report warnings) and in RUN_DIR/train.log (appended to
    when a run resumes)."""
    for handler in log.handlers:  # an earlier run's (in this process): its train.log is closed
        handler.close()
    log.handlers.clear()
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if output_dir is not None and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(output_dir / "train.log", mode="a" if append else "w", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)


def prepare_output_dir(path: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to mix a new run into a finished one, or into an interrupted one's checkpoints (never lose a run)."""
    run_json = path / "run.json"
    finished = False
    if run_json.is_file():
        try:
            finished = json.loads(run_json.read_text()).get("finished", False)
        except (OSError, json.JSONDecodeError):
            finished = False
    if finished and resuming:
        raise UserError(f"The run in {path} already finished: there is nothing to resume. Train again with "
                        "`--overwrite`, or in another `--output-dir`.")
    if finished and not overwrite:
        raise UserError(
            f"Output directory {path} already holds a finished run. Pick another `--output-dir`, or pass "
            "`--overwrite` to replace it."
        )
    saved = sorted(checkpoint.root_of(path).glob("step-*")) if checkpoint.root_of(path).is_dir() else []
    if saved and not resuming and not overwrite:
        raise UserError(
            f"Output directory {path} holds checkpoints of an unfinished run (newest: {saved[-1].name}). Continue "
            "it with `--resume`, or pass `--overwrite` to start over (its checkpoints are deleted)."
        )
    if overwrite and not resuming and os.environ.get("RANK", "0") == "0":
        import shutil

        if saved:
            shutil.rmtree(checkpoint.root_of(path), ignore_errors=True)
        # what the earlier run wrote at its end and this one may not write again (a run without a test split
        # writes no test predictions): left in place, the report would show the old run's results as this one's
        for name in STALE_ON_OVERWRITE:
            stale = path / name
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


STALE_ON_OVERWRITE = ("predictions", "plots", "errors.csv", "per_class.csv", "report.html")
"""A replaced run's files built from its predictions: removed before the new run starts (`prepare_output_dir`)."""


def make_accelerator(recipe: Recipe) -> Accelerator:
    """The run's Accelerator: the recipe's precision, trackers and sharding (`training.sharding`, or the launch's
    Accelerate config), on the GPU when there is one."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    t = recipe.training
    use_cpu = not torch.cuda.is_available()
    if t.mixed_precision == "fp16" and use_cpu:
        raise UserError(
            "`training.mixed_precision: fp16` needs a GPU; this machine has none. Use `bf16` (fast on recent "
            "CPUs) or `no`."
        )
    from textxfer.engine.distributed import check_process_count, tracker_kwargs
    from textxfer.engine.sharding import accelerator_plugins, check_sharding, launch_environment_kept

    fresh_accelerate_state()
    warn_if_emulated(t.mixed_precision)
    # Gradient accumulation is done by Loop.train_step (with no_sync), not by Accelerate: every global batch is
    # cut into accumulation x processes shards there, so results do not depend on how it is cut.
    with launch_environment_kept():  # a recipe's plugin would leave ACCELERATE_USE_FSDP set for later runs
        acc = Accelerator(
            mixed_precision=effective_mixed_precision(t.mixed_precision), cpu=use_cpu,
            dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.distributed_timeout))],
            **tracker_kwargs(t.log_with, Path(recipe.output_dir)), **accelerator_plugins(recipe),
        )
    check_process_count(acc)
    check_sharding(acc, recipe)
    return acc


def fresh_accelerate_state() -> None:
    """Forget the precision and gradient settings a previous `train()` in this process left in Accelerate.

    Accelerate keeps one `AcceleratorState` per process and refuses a second `Accelerator` with another precision,
    so a notebook, `compare` or the test suite could train only once per precision. Each run builds its own
    Accelerator; what it must share with earlier runs is only the process set-up (`PartialState`: device, process
    group), which is kept. Accelerate's own test utilities reset the same two states between tests."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
