"""Trainable parameters the forward pass never uses, found and frozen before a DDP run starts.

DDP wants a gradient for every trainable parameter at every step and fails on one the model never calls (a head
part this model does not use); freezing such a parameter changes nothing, since AdamW skips parameters without a
gradient.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("textxfer")


def freeze_unused_parameters(loop) -> None:
    """One forward/backward on two training examples (random state put back) finds the trainable parameters
    without a gradient; they are frozen."""
    loop.model.to(loop.acc.device)
    trainable = [(n, p) for n, p in loop.model.named_parameters() if p.requires_grad]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        batch = loop.to_device(loop.train_dl.collate_fn(list(range(min(2, len(loop.train_dl.dataset))))))
        loop.train_mode()
        with loop.acc.autocast():
            loop.logits(batch).float().sum().backward()
        unused = [n for n, p in trainable if p.grad is None]
    finally:
        for _, p in trainable:
            p.grad = None
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    for n, p in trainable:
        if n in unused:
            p.requires_grad_(False)
    if unused:
        log.info(f"frozen {len(unused)} trainable parameters that the forward pass never uses (DDP needs a "
                 f"gradient for each): {', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}")
