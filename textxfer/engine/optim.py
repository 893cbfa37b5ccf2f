"""The optimiser of a run: AdamW parameter groups (no decay on biases and norms, the new head's own rate, layer-wise
decay), the linear warm-up/decay schedule, and the head's L2 penalty."""

from __future__ import annotations

import functools

import torch
from torch import nn

from textxfer.backbones.load import Parts
from textxfer.strategies.smalldata import is_new_head


def fused_adamw(model: torch.nn.Module) -> dict:
    """`fused=True` where torch has the one-kernel AdamW for every trained parameter (CPU, CUDA): the default
    per-tensor AdamW runs ~10 ops per parameter tensor and was a quarter of a full fine-tune's step time on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def _linear_lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`: transformers'
    `get_linear_schedule_with_warmup`, without its import (transformers.optimization pulls in peft, which a run
    without LoRA does not need)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_linear_lr_factor, warmup=warmup, total=total))


def param_groups(model: torch.nn.Module, parts, lr: float, head_lr: float | None,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the head may have its own learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        is_head = is_new_head(model, parts, clean)
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((is_head, no_decay), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr": head_lr if (is_head and head_lr) else lr})
    return out


def depth_of(group: str, n_layers: int) -> int | None:
    """How far below the top layer group a parameter group is (0: top layer; n: embeddings; None: head)."""
    if group == "embeddings":
        return n_layers
    if group.startswith("layer."):
        return n_layers - 1 - int(group.split(".")[1])
    return None


def layerwise_groups(model: nn.Module, parts: Parts, lr: float, head_lr: float | None, weight_decay: float,
                     decay: float) -> list[dict]:
    """Learning rate lr x decay^depth per layer group (the head and pooler at lr, or head_lr for the new head)."""
    n = len(parts.layers)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        group = parts.group_of(clean)
        depth = depth_of(group, n)
        new_head = is_new_head(model, parts, clean)
        rate = (head_lr or lr) if new_head else lr * (decay ** depth if depth is not None else 1.0)
        no_decay = p.ndim < 2 or "norm" in name.lower()
        key = ("new-head" if new_head else group, no_decay)
        entry = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                        "lr": rate, "name": f"{key[0]}{' (no decay)' if no_decay else ''}"})
        entry["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-groups[k]["lr"], k))]


def head_weight_matrices(model: nn.Module, parts: Parts) -> list[nn.Parameter]:
    """The new head's weight matrices (not its biases, not the pretrained pooler): what `training.head_l2` penalises."""
    out = []
    for name, p in model.named_parameters():
        clean = name.removeprefix("base_model.model.")
        if p.ndim >= 2 and is_new_head(model, parts, clean) and "lora_" not in clean:
            out.append(p)
    return out


@torch.no_grad()
def add_head_l2(params: list[nn.Parameter], coefficient: float) -> None:
    """Add the gradient of 1/2 x coefficient x ||W||^2 (once the processes' gradients are summed: exact under DDP
    and accumulation); parameters frozen at this step have no gradient and are left alone."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(p, alpha=coefficient)


def optimizer_groups(loop) -> list[dict]:
    """AdamW groups of the run: the usual ones, or with `layer_lr_decay` < 1 one group per layer group."""
    t = loop.recipe.training
    if t.layer_lr_decay >= 1.0:
        return param_groups(loop.model, loop.parts, t.learning_rate, t.head_learning_rate, t.weight_decay)
    return layerwise_groups(loop.model, loop.parts, t.learning_rate, t.head_learning_rate, t.weight_decay,
                            t.layer_lr_decay)
