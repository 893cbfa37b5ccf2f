"""The trainable weights of the best evaluation so far, kept aside during training and put back at the end, so
the saved model is the best one, not the last.

Kept in a file in the run directory and memory-mapped back: a full fine-tune's copy (90 MB for MiniLM) then takes
page cache, not process memory; in memory only where the file cannot be written. Under FSDP each process keeps
its own shard of each weight (`sharding.local`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from textxfer.engine.sharding import local, reshard

log = logging.getLogger("textxfer")


def best_file(loop) -> Path:
    """This process's file of best weights in the run directory."""
    return loop.out / f".best-weights-{loop.acc.process_index}.safetensors"


def keep_best(loop) -> None:
    """Set `loop.state.best_state` to the trainable weights as they are now (the best evaluation)."""
    from textxfer.core.tensor_files import map_safetensors, write_safetensors

    model = loop.acc.unwrap_model(loop.model)
    reshard(model)
    params = {k: local(v).detach() for k, v in model.named_parameters() if v.requires_grad}  # FSDP: the shard
    path = best_file(loop)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_safetensors(tmp, params)
        os.replace(tmp, path)
        loop.state.best_state = map_safetensors(path)
    except OSError as e:
        log.warning(f"could not write the best weights to {path} ({e}); keeping them in memory")
        tmp.unlink(missing_ok=True)
        loop.state.best_state = {k: v.clone() for k, v in params.items()}


def restore_best(loop) -> None:
    """Copy the kept best weights back into the model (nothing when none were kept) and remove their file."""
    if loop.state.best_state is None:
        return
    model = loop.acc.unwrap_model(loop.model)
    reshard(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in loop.state.best_state.items():
            local(params[k]).copy_(v)
    loop.state.best_state = None
    best_file(loop).unlink(missing_ok=True)
