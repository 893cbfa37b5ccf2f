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
each process its own random state, so on several machines RUN_DIR must be on a shared file system.

Sharded runs (FSDP, DeepSpeed: `training.sharding`) write their part through `Accelerator.save_state` instead,
each process its own shards, into the same temporary folder, renamed and listed in the same manifest:

    RUN_DIR/checkpoints/step-0000120/
      pytorch_model_fsdp_0/, optimizer_0/   weight and optimizer shards (torch.distributed.checkpoint; DeepSpeed:
                                            pytorch_model/), scheduler.bin, random_states_0.pkl, ... per process
      best-0.safetensors, best-1.safetensors  each process's shard of the best weights (FSDP)
      state.json                           as above, with `sharding` naming how the run was sharded

Unsharded runs keep textxfer's own files because they hold only what trains: `save_state` would write the whole
model, a frozen backbone included, into every checkpoint of a head or LoRA run.

This module writes checkpoints, rotates them and tells complete ones apart; `resuming` finds one and loads it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from textxfer.engine import sharding

log = logging.getLogger("textxfer")

DIRNAME = "checkpoints"
FORMAT = 1


def _io_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException  # a failed sharded write (every process)

    return (OSError, RuntimeError, SafetensorError, CheckpointException)


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
    from textxfer.core.files import jsonable

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
    acc, p = loop.acc, loop.state.progress
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
    sharded = sharding.is_sharded(acc)
    best_in = None
    try:
        if sharded:
            best_in = _save_sharded(loop, tmp)
        else:
            _save_torch(rng_state(), tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process and not sharded:
            model = acc.unwrap_model(loop.model)
            _save_tensors(model_tensors(model), tmp / "model.safetensors")
            if loop.state.best_state is not None:
                best_in = "model.safetensors"
                if loop.state.best is None or loop.state.best.get("step") != p.step:
                    _save_tensors(_cpu_copy(loop.state.best_state.items()), tmp / "best.safetensors")
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


def _save_sharded(loop, tmp: Path) -> str | None:
    """A sharded run's part of a checkpoint (every process): Accelerate's state (weights and optimizer in shards,
    schedule, random states), and the best weights where they are not the current ones (under FSDP each process
    its shard, `best-{process}.safetensors`; under DeepSpeed process 0, as the weights are whole). Returns the
    name of the best weights' file(s) for state.json ("best-{process}.safetensors" under FSDP), or None."""
    acc, p = loop.acc, loop.state.progress
    sharding.reshard(acc.unwrap_model(loop.model))
    acc.save_state(str(tmp))
    name = None
    if loop.state.best_state is not None and loop.state.best is not None and loop.state.best.get("step") == p.step:
        name = "current"  # the weights just saved are the best
    elif loop.state.best_state is not None:
        name = "best-{process}.safetensors" if sharding.is_fsdp(acc) else "best.safetensors"
        if sharding.is_fsdp(acc) or acc.is_main_process:
            _save_tensors(_cpu_copy(loop.state.best_state.items()), tmp / name.format(process=acc.process_index))
    for f in tmp.rglob("*"):  # Accelerate's files too, flushed before state.json says they are complete
        if f.is_file():
            _fsync(f)
    return name


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
    from textxfer.config.schema import to_dict
    from textxfer.core.environment import versions

    p = loop.state.progress
    metric = loop.recipe.training.metric
    last = loop.state.history["eval"][-1] if loop.state.history["eval"] else None
    value = last.get(metric) if last and last.get("step") == p.step else None
    files = {f.relative_to(folder).as_posix(): f.stat().st_size for f in sorted(folder.rglob("*"))
             if f.is_file() and f.name != "state.json"}
    return {
        "format": FORMAT, "complete": True, "reason": reason, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "step": p.step, "epoch": p.epoch, "batch_in_epoch": p.batch, "total_steps": loop.total_steps,
        "progress": asdict(p), "history": loop.state.history, "best": loop.state.best, "best_in": best_in,
        "metric": metric, "metric_value": value, "num_processes": loop.acc.num_processes,
        "sharding": loop.acc.distributed_type.value if sharding.is_sharded(loop.acc) else None,
        "cache_key": getattr(loop, "cache_key", None), "data": data_fingerprints(loop),
        "train_seconds": time.time() - loop.started, "textxfer_version": versions().get("textxfer"),
        "recipe": to_dict(loop.recipe), "files": files,
    }


def data_fingerprints(loop) -> dict[str, str]:
    """Fingerprints of the loaded splits, as the modality takes them (texts and labels; image bytes and labels),
    computed once per run: run.json records them and a resume refuses changed data."""
    if loop.state.fingerprints is None:
        loop.state.fingerprints = loop.modality.fingerprints(loop)
    return loop.state.fingerprints


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


# ------------------------------------------------------------------------------------------------ telling complete ones

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


# ------------------------------------------------------------------------------------------------ when to save

_WARNED: set[str] = set()
"""Distributed types already warned about in this process."""


def checkpoints_supported(loop) -> bool:
    """False (with a warning, once) for Megatron-LM runs, which textxfer's checkpoints do not cover."""
    kind = loop.acc.distributed_type.value
    if kind == "MEGATRON_LM":
        if kind not in _WARNED:
            log.warning(f"warning: textxfer checkpoints cover single-process, DDP, FSDP and DeepSpeed runs; with "
                        f"{kind} they are not written (the final model still is)")
            _WARNED.add(kind)
        return False
    return True


def checkpoint_due(loop) -> bool:
    """Whether `training.checkpoint_every` asks for a checkpoint now (after a step, every N steps or each epoch)."""
    every, p = loop.recipe.training.checkpoint_every, loop.state.progress
    if every is None or not checkpoints_supported(loop):
        return False
    if every == "epoch":
        return p.batch == 0
    return p.step % every == 0
