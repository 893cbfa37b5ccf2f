"""Setting a run up before any model is built: the Accelerator (with Accelerate's per-process state reset so a
process can train again), logging to stderr and train.log, and the guard that never lets a new run overwrite a
finished or interrupted one.
"""

from __future__ import annotations

import json
import logging
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


def setup_logging(output_dir: Path | None, is_main: bool, append: bool = False, deferred: bool = False) -> None:
    """Log to stderr and, on the main process, to OUTPUT_DIR/train.log (appended to when `append`: a resume).

    `deferred`: the lines are held in memory until `attach_run_log` opens train.log, so a run that replaces an
    earlier one (`--overwrite`) leaves the earlier run's log in place until the new run has read its data."""
    for handler in log.handlers:  # an earlier run's (in this process): its train.log is closed
        handler.close()
    log.handlers.clear()
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if output_dir is not None and is_main:
        if deferred:
            from logging.handlers import MemoryHandler

            log.addHandler(MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1))
        else:
            attach_run_log(output_dir, append)


def attach_run_log(output_dir: Path, append: bool = False) -> None:
    """Write the log to OUTPUT_DIR/train.log from now on, with the lines `setup_logging(deferred=True)` held."""
    from logging.handlers import MemoryHandler

    output_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(output_dir / "train.log", mode="a" if append else "w", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for held in [h for h in log.handlers if isinstance(h, MemoryHandler)]:
        held.setTarget(fh)
        held.flush()
        log.removeHandler(held)
        held.close()
    log.addHandler(fh)


def prepare_output_dir(path: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to mix a new run into a finished one, or into an interrupted one's checkpoints (never lose a run).
    With `overwrite` nothing is removed here: `clear_replaced_run` does it once the new run's data are read."""
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


def clear_replaced_run(path: Path) -> None:
    """Remove what an earlier run in `path` wrote and a new run writes again or may not (`REPLACED_BY_A_NEW_RUN`).

    Called once the new run has read its data and loaded its model (`Loop.build`), so `--overwrite` with bad data
    or a wrong model name costs the earlier run nothing. From here on the folder holds no finished run: a new run
    stopped before its end leaves checkpoints to `--resume`, never the earlier run's model under the new recipe."""
    import shutil

    for name in REPLACED_BY_A_NEW_RUN:
        old = path / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


REPLACED_BY_A_NEW_RUN = ("run.json", "metrics.json", "history.json", "model", "adapter", checkpoint.DIRNAME, "logs",
                         "predictions", "plots", "errors.csv", "per_class.csv", "report.html", "self_training")
"""The run directory's files an earlier run leaves (docs/run-directory.md), removed by `clear_replaced_run`. Left
in place, a new run without a test split would report the old run's test predictions as its own, and one stopped
midway would look finished with the old model. recipe.yaml and train.log are written anew; other files are the
user's."""


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
