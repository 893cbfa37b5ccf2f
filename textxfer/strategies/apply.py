"""Apply the recipe's transfer strategy to a classifier: the registered strategy of `strategy.name` decides what
trains (`textxfer.strategies.base`, one module per strategy in `textxfer.strategies.methods`); frozen parts then
run in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from textxfer.backbones.load import Parts, unwrap_peft
from textxfer.config.schema import StrategyConfig
from textxfer.strategies.base import Applied, get_strategy


def apply_strategy(model: nn.Module, parts: Parts, cfg: StrategyConfig) -> Applied:
    """Set `requires_grad` (or wrap with peft) as the recipe's strategy says."""
    return get_strategy(cfg.name).apply(model, parts, cfg)


def frozen_layers_for(cfg: StrategyConfig, parts: Parts) -> int:
    """How many lower layers the strategy freezes (-1: not even the embeddings)."""
    return get_strategy(cfg.name).frozen_layers(cfg, parts)


def set_frozen_eval(model: torch.nn.Module, parts, frozen_prefix: int) -> None:
    """Frozen parts run in eval mode (no dropout), as users expect of 'frozen' and as the cache needs."""
    if frozen_prefix < 0:
        return
    root = unwrap_peft(model)
    for path in parts.embeddings + parts.layers[:frozen_prefix]:
        root.get_submodule(path).eval()
    # modules that never train (the mean-pooling layer, a converted CNN's fixed gates): no dropout in them either,
    # so a cached and an uncached run see the same pooled features
    for path in getattr(getattr(root, "config", None), "textxfer_frozen_modules", None) or ():
        root.get_submodule(path).eval()
    # A BatchNorm with frozen weights (a CNN's last norm under `head`, every norm under `lora`) keeps its running
    # statistics: in train mode it would normalise by batch statistics and overwrite them.
    for module in root.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()
