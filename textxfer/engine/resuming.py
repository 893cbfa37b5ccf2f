"""Resuming an interrupted run: find the checkpoint to continue from, refuse a recipe whose change would make it
meaningless, and load it into a prepared loop.

Kept apart from `checkpoint` (which writes checkpoints and tells complete ones) because resume is the other side
of the format: it only reads, and it is what decides whether a run may continue at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from textxfer.core.errors import UserError
from textxfer.engine.best_weights import keep_best
from textxfer.engine.checkpoint import (
    DIRNAME,
    data_fingerprints,
    problem_with,
    read_state,
    root_of,
    set_rng_state,
    step_of,
)
from textxfer.engine.run_state import Progress
from textxfer.engine.sharding import is_sharded

log = logging.getLogger("textxfer")


# Recipe sections whose change makes a checkpoint meaningless: resuming with them changed is refused.
FIXED_SECTIONS = ("model", "data", "strategy")
FIXED_TRAINING_KEYS = {
    "training.batch_size": "the checkpoint's position counts batches of the old size",
    "training.gradient_accumulation_steps": "the checkpoint's position counts optimizer steps of the old size",
    "training.seed": "the batch order of the epoch in progress comes from the old seed",
    "training.learning_rate": "the restored optimizer and schedule carry the old rate",
    "training.head_learning_rate": "the restored optimizer and schedule carry the old rate",
    "training.layer_lr_decay": "the restored optimizer carries the old per-layer rates",
    "training.weight_decay": "the restored optimizer carries the old decay",
    "training.warmup_ratio": "the restored schedule carries the old warm-up",
    "training.head_warmup_epochs": "the restored schedule carries the old warm-up",
}
"""Training keys a checkpoint's state has fixed: a changed value would be ignored or would derail the run, so
resuming with one changed is refused (with why), not noted. (A changed contrastive stage is refused where it
matters, by the frozen part's fingerprint, `restore`.)"""


def find(path: Path) -> tuple[Path, list[str]]:
    """The checkpoint to resume from: `path` itself, or the newest complete one under a run or checkpoints
    folder; with notes naming the incomplete ones skipped."""
    path = Path(path)
    if (path / "state.json").exists() or path.name.startswith("step-"):
        problem = problem_with(path)
        if problem:
            raise UserError(f"Checkpoint {path} is incomplete: {problem}. Resume from its run folder "
                            f"({path.parent.parent}) to use the newest complete checkpoint instead.")
        return path, []
    root = path if path.name == DIRNAME else root_of(path)
    if not root.is_dir():
        raise UserError(
            f"Nothing to resume in {path}: it has no `{DIRNAME}` folder. Give the run directory of an interrupted "
            "`textxfer train` (its --output-dir), or one of its checkpoint folders. Checkpoints are written when "
            "`training.checkpoint_every` is set and when training is interrupted with Ctrl-C or SIGTERM."
        )
    notes = []
    candidates = sorted((c for c in root.iterdir() if c.is_dir() and c.name.startswith("step-")),
                        key=step_of, reverse=True)
    for c in candidates:
        problem = problem_with(c)
        if problem is None:
            return c, notes
        notes.append(f"skipped incomplete checkpoint {c.name}: {problem}")
    raise UserError(f"No complete checkpoint in {root} ({len(candidates)} incomplete). Start the run again without "
                    "--resume (with --overwrite).")


def check_recipe(saved: dict, current: dict) -> list[str]:
    """Refuse (UserError) when the model, data or strategy changed, or a key in `FIXED_TRAINING_KEYS`; return
    notes on other changed keys."""
    from textxfer.config.diff import recipe_diff

    if not isinstance(saved, dict) or not saved:
        raise UserError("Cannot resume: the checkpoint's state.json holds no recipe to check this one against (the "
                        "file was edited or written by another program). Start a new run in another --output-dir.")
    diff = recipe_diff(saved, current)  # compared as JSON gives them back: {0: a} equals {"0": a}
    fixed = [d for d in diff if d.split(".", 1)[0].split(":", 1)[0] in FIXED_SECTIONS]
    if fixed:
        raise UserError(
            "Cannot resume: the recipe's model, data or strategy differ from the checkpoint's, so its weights and "
            "data position would not fit:\n  " + "\n  ".join(fixed) + "\nRestore these values (the checkpoint "
            "folder's state.json holds its recipe), or start a new run in another --output-dir."
        )
    held = [f"{d}  ({why})" for d in diff for key, why in FIXED_TRAINING_KEYS.items()
            if d.startswith((key + ":", key + "."))]
    if held:
        raise UserError(
            "Cannot resume with these training keys changed: the checkpoint's state fixes them, so the new value "
            "would be ignored or would derail the run:\n  " + "\n  ".join(held) + "\nRestore these values (the "
            "checkpoint folder's state.json holds its recipe), or start a new run in another --output-dir."
        )
    others = [d for d in diff if not d.startswith(("output_dir", "description"))]
    return [f"resuming with a changed recipe key (the run continues with the new value): {d}" for d in others]


def restore(loop, ckpt: Path) -> dict:
    """Load a checkpoint into a prepared loop: weights, optimizer, schedule, random states and position."""
    from safetensors.torch import load_file

    state = read_state(ckpt)
    acc = loop.acc
    if state.get("cache_key") != getattr(loop, "cache_key", None) and state.get("cache_key") is not None:
        raise UserError(
            f"Cannot resume from {ckpt}: the frozen part of the model (or its cached features) differs from the one "
            "that was trained: the checkpoint files at `model.name` changed or, with `training.contrastive`, the "
            "stage tuned the body differently this time (a changed stage setting, seed, precision or machine). "
            "Restore what changed, or start a new run."
        )
    changed = [s for s, f in state.get("data", {}).items() if data_fingerprints(loop).get(s) not in (None, f)]
    if changed:
        raise UserError(
            f"Cannot resume from {ckpt}: the {', '.join(changed)} data differ from the data the run trained on "
            "(same recipe, different file contents or a different DataFrame/Dataset). Restore the original data, or "
            "start a new run."
        )
    sharded = check_sharding_matches(state, acc, ckpt)
    model = acc.unwrap_model(loop.model)
    if sharded:  # weights, optimizer, schedule and random states, each process its shards
        acc.load_state(str(ckpt))
    else:
        _load_into(model, load_file(str(ckpt / "model.safetensors")), ckpt)
        loop.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
        loop.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True, map_location="cpu"))
    loop.state.progress = Progress(**state["progress"])
    loop.state.history = state["history"]
    loop.state.best = state["best"]
    loop.state.best_state = None
    if state.get("best_in") == "current":  # a sharded checkpoint saved at the best evaluation
        keep_best(loop)
    elif state.get("best_in"):
        best = load_file(str(ckpt / state["best_in"].format(process=acc.process_index)))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        loop.state.best_state = {k: v.to(acc.device) for k, v in best.items() if k in trainable}
    if not sharded:  # (a sharded run's random states came back with load_state)
        restore_rng(ckpt, acc.process_index, loop.recipe.training.seed)
    if state.get("num_processes") != acc.num_processes:
        log.info(f"resumed on {acc.num_processes} processes; the checkpoint was saved by {state.get('num_processes')} "
                 "(the global batch and data order are the same; dropout draws differ)")
    log.info(f"resumed from {ckpt}: step {state['step']} of {loop.total_steps}, epoch {state['epoch'] + 1}, "
             f"{state['batch_in_epoch']} batches into it")
    return state


def restore_rng(ckpt: Path, process: int, seed: int) -> None:
    """This process's random states as saved; a process the checkpoint had not (resumed on more processes than
    saved) starts a fresh, seeded stream."""
    rng = ckpt / f"rng-{process}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    else:
        from accelerate.utils import set_seed

        set_seed(seed + process)


def check_sharding_matches(state: dict, acc, ckpt: Path) -> bool:
    """Refuse a checkpoint saved with other sharding than this run's (its files would not fit), and a sharded one
    on another number of processes (each process's best-weights shard fits only its own); True when sharded."""
    then = state.get("sharding")
    now = acc.distributed_type.value if is_sharded(acc) else None
    if then != now:
        def how(kind):
            return f"sharded with {kind}" if kind else "unsharded (one process or DDP)"

        raise UserError(f"Cannot resume from {ckpt}: it was saved by a run {how(then)}, and this run is {how(now)}. "
                        "Resume with the `training.sharding` (and Accelerate config) it was saved with.")
    if then and state.get("num_processes") != acc.num_processes:
        raise UserError(f"Cannot resume from {ckpt} on {acc.num_processes} processes: it was saved sharded over "
                        f"{state.get('num_processes')}. Resume it with --num-processes {state.get('num_processes')}.")
    return then is not None


def _load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(trainable - set(tensors))
    if missing:
        raise UserError(f"Cannot resume from {ckpt}: it lacks trained parameters {missing[:3]}... The model or "
                        "strategy differs from the one that saved it.")
    with torch.no_grad():
        for name, value in tensors.items():
            target = params.get(name, buffers.get(name))
            if target is None:
                continue
            if target.shape != value.shape:
                raise UserError(f"Cannot resume from {ckpt}: {name} has shape {tuple(value.shape)} there and "
                                f"{tuple(target.shape)} in this model.")
            target.copy_(value.to(target.device, target.dtype))
