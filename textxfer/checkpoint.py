"""Checkpoints that resume a run exactly, written so that a crash or a full disk never costs the previous one.

    RUN_DIR/checkpoints/step-0000120/
      model.safetensors   the parameters that train (every parameter for `full`) and the model's buffers
      best.safetensors    the trainable parameters of the best evaluation so far (absent when they are the current)
      optimizer.pt        AdamW moments          scheduler.pt   learning-rate schedule position
      rng-0.pt, rng-1.pt  Python/NumPy/torch random states, one file per process
      state.json          written last: data position (epoch, batch in epoch, step), history, best metrics,
                          early-stopping state, frozen-feature cache key, data fingerprints, the resolved recipe,
                          and a manifest of the files above with their sizes

A checkpoint is written into `.tmp-step-...`, flushed to disk, and renamed into place, so a folder named
`step-...` is complete; resume still checks the manifest and skips (and names) any folder that is not.
If a save fails (a full disk), the partial folder is removed, the earlier checkpoints stay, training goes on.

With several processes, process 0 writes the weights and optimizer state (the same on every DDP process) and
each process its own random state, so on several machines RUN_DIR must be on a shared file system. FSDP and
DeepSpeed shard the weights and are not covered (the final model is still saved).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from textxfer.errors import UserError

log = logging.getLogger("textxfer")

DIRNAME = "checkpoints"
FORMAT = 1
# Recipe sections whose change makes a checkpoint meaningless: resuming with them changed is refused.
FIXED_SECTIONS = ("model", "data", "strategy")


def _io_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


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


def root_of(run_dir: Path) -> Path:
    return Path(run_dir) / DIRNAME


def step_of(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


# ------------------------------------------------------------------------------------------------ saving

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    _fsync(path)


def _save_torch(obj, path: Path) -> None:
    torch.save(obj, path)
    _fsync(path)


def _save_json(obj, path: Path) -> None:
    from textxfer.artifacts import jsonable

    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=jsonable), encoding="utf-8")
    _fsync(path)


def _cpu_copy(items) -> dict[str, torch.Tensor]:
    """Detached CPU tensors, shared storage broken up (safetensors refuses tensors that share memory)."""
    out, seen = {}, set()
    for name, t in items:
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        t = t.to("cpu", copy=t.device.type == "cpu" and ptr in seen).contiguous()
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: every parameter that trains, and every buffer."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    buffers = [(n, b) for n, b in model.named_buffers() if b is not None]
    return _cpu_copy(params + buffers)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _all_ok(acc, ok: bool) -> bool:
    """True only if every process says ok (a collective: every process must call it)."""
    if acc.num_processes == 1:
        return ok
    flags = acc.gather(torch.tensor([1 if ok else 0], device=acc.device))
    return bool(flags.min().item())


def save(loop, reason: str = "scheduled") -> Path | None:
    """Write a checkpoint of `loop` (every process calls this); the path, or None when the save failed."""
    acc, p = loop.acc, loop.progress
    root = root_of(loop.out)
    final = root / f"step-{p.step:07d}"
    tmp = root / f".tmp-{final.name}"
    errors = _io_errors()
    problem = None
    if acc.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):  # left by a crash during an earlier save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            problem = e
    if not _all_ok(acc, problem is None):
        return _failed(acc, final, problem or "another process could not write")
    try:
        _save_torch(rng_state(), tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            model = acc.unwrap_model(loop.model)
            _save_tensors(model_tensors(model), tmp / "model.safetensors")
            best_in = None
            if loop.best_state is not None:
                best_in = "model.safetensors"
                if loop.best is None or loop.best.get("step") != p.step:
                    _save_tensors(_cpu_copy(loop.best_state.items()), tmp / "best.safetensors")
                    best_in = "best.safetensors"
            _save_torch(loop.optimizer.state_dict(), tmp / "optimizer.pt")
            _save_torch(loop.scheduler.state_dict(), tmp / "scheduler.pt")
    except errors as e:
        problem = e
    ok = _all_ok(acc, problem is None)
    if acc.is_main_process:
        if ok:
            try:
                _save_json(state_record(loop, reason, best_in, tmp), tmp / "state.json")
                _fsync(tmp)
                _swap_in(tmp, final)
                _fsync(root)
            except errors as e:
                problem, ok = e, False
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = _all_ok(acc, ok)
    if not ok:
        return _failed(acc, final, problem or "another process could not write its part")
    if acc.is_main_process:
        rotate(root, loop.recipe.training.keep_checkpoints, lower_better=loop.recipe.training.metric == "loss")
    log.info(f"checkpoint saved: {final} ({reason})")
    return final


def _failed(acc, final: Path, problem) -> None:
    if not acc.is_main_process:
        return None
    earlier = complete_checkpoints(final.parent)
    kept = f"; the earlier checkpoint {earlier[-1]} is intact" if earlier else ""
    log.warning(f"warning: could not save checkpoint {final.name}: {problem}{kept}. Training goes on; free disk "
                "space so the next checkpoint succeeds.")
    return None


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place (replacing an older save of the same step, never losing both)."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def state_record(loop, reason: str, best_in: str | None, folder: Path) -> dict:
    from textxfer.artifacts import versions
    from textxfer.recipe import to_dict

    p = loop.progress
    metric = loop.recipe.training.metric
    last = loop.history["eval"][-1] if loop.history["eval"] else None
    value = last.get(metric) if last and last.get("step") == p.step else None
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.name != "state.json"}
    return {
        "format": FORMAT, "complete": True, "reason": reason, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "step": p.step, "epoch": p.epoch, "batch_in_epoch": p.batch, "total_steps": loop.total_steps,
        "progress": asdict(p), "history": loop.history, "best": loop.best, "best_in": best_in,
        "metric": metric, "metric_value": value, "num_processes": loop.acc.num_processes,
        "cache_key": getattr(loop, "cache_key", None), "data": data_fingerprints(loop),
        "train_seconds": time.time() - loop.started, "textxfer_version": versions().get("textxfer"),
        "recipe": to_dict(loop.recipe), "files": files,
    }


def data_fingerprints(loop) -> dict[str, str]:
    """Fingerprints of the loaded splits (computed once per run)."""
    if getattr(loop, "_fingerprints", None) is None:
        from textxfer.data import fingerprint

        loop._fingerprints = {split: fingerprint(ds) for split, ds in loop.splits.items()}
    return loop._fingerprints


def rotate(root: Path, keep: int, lower_better: bool) -> None:
    """Keep the newest `keep` complete checkpoints and the best one by the recipe's metric; remove the rest."""
    done = complete_checkpoints(root)
    keep_set = set(done[-keep:])
    scored = [(read_state(c).get("metric_value"), c) for c in done]
    scored = [(v, c) for v, c in scored if isinstance(v, (int, float))]
    if scored:  # the first to reach the best value, as the in-memory best model is
        keep_set.add(min(scored, key=lambda vc: (vc[0] if lower_better else -vc[0], step_of(vc[1])))[1])
    for c in done:
        if c not in keep_set:
            shutil.rmtree(c, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ finding

def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def problem_with(ckpt: Path) -> str | None:
    """None when a checkpoint folder is complete; else what is wrong with it."""
    if not (ckpt / "state.json").is_file():
        return "no state.json (the save did not finish)"
    state = read_state(ckpt)
    if not state.get("complete") or "files" not in state:
        return "state.json is unreadable or not marked complete"
    for name, size in state["files"].items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
    return None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [c for c in root.iterdir() if c.is_dir() and c.name.startswith("step-") and step_of(c) >= 0]
    return sorted((c for c in found if problem_with(c) is None), key=step_of)


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
    """Refuse (UserError) when the model, data or strategy changed; return notes on other changed keys."""
    from textxfer.recipe import recipe_diff

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
    others = [d for d in diff if not d.startswith(("output_dir", "description"))]
    return [f"resuming with a changed recipe key (the run continues with the new value): {d}" for d in others]


# ------------------------------------------------------------------------------------------------ restoring

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
    model = acc.unwrap_model(loop.model)
    _load_into(model, load_file(str(ckpt / "model.safetensors")), ckpt)
    loop.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    loop.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True, map_location="cpu"))
    loop.progress = Progress(**state["progress"])
    loop.history = state["history"]
    loop.best = state["best"]
    loop.best_state = None
    if state.get("best_in"):
        best = load_file(str(ckpt / state["best_in"]))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        loop.best_state = {k: v.to(acc.device) for k, v in best.items() if k in trainable}
    rng = ckpt / f"rng-{acc.process_index}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=True))
    else:  # resumed on more processes than saved: this one starts a fresh, seeded stream
        from accelerate.utils import set_seed

        set_seed(loop.recipe.training.seed + acc.process_index)
    if state.get("num_processes") != acc.num_processes:
        log.info(f"resumed on {acc.num_processes} processes; the checkpoint was saved by {state.get('num_processes')} "
                 "(the global batch and data order are the same; dropout draws differ)")
    log.info(f"resumed from {ckpt}: step {state['step']} of {loop.total_steps}, epoch {state['epoch'] + 1}, "
             f"{state['batch_in_epoch']} batches into it")
    return state


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


# ------------------------------------------------------------------------------------------------ signals

class StopSignals:
    """Turn SIGINT/SIGTERM into a request to save a checkpoint and stop at the end of the current step.

    Under a launcher one Ctrl-C arrives twice (from the terminal, then passed on by torchrun's agent), so repeats
    within `grace` seconds count as the same request. A signal after that means "now": Ctrl-C raises
    KeyboardInterrupt, SIGTERM exits, without saving.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace: float = 3.0):
        self.received: int | None = None
        self.grace = grace
        self._first = 0.0
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received, self._first = signum, time.monotonic()
            log.info(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                        "stopping (send it again to quit at once, without saving)")
            return
        if time.monotonic() - self._first < self.grace:
            return
        self._restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
