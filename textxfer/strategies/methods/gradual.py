"""`gradual`: the head first, then one more layer group from the top every `strategy.unfreeze_every`, down to
`strategy.freeze_layers` (the floor, frozen and cached throughout). What is open at a step is decided during
training (`textxfer.engine.schedule`); here the floor is frozen and everything above it is marked trainable."""

from __future__ import annotations

from textxfer.backbones.load import Parts
from textxfer.config.schema import StrategyConfig
from textxfer.core.errors import UserError
from textxfer.strategies.base import Strategy, register


def gradual_floor(cfg: StrategyConfig, parts: Parts) -> int:
    """Lower layers that `gradual` never unfreezes (`freeze_layers`); the frozen-prefix cache covers them."""
    n = len(parts.layers)
    if parts.shared_layers:
        raise UserError("Strategy `gradual` unfreezes layer groups one by one, but ALBERT shares one set of layer "
                        "weights across all of them. Use `freeze` or `full` for ALBERT.")
    if cfg.freeze_layers >= n:
        raise UserError(f"`strategy.freeze_layers` is {cfg.freeze_layers}, but this model has {n} layer groups: "
                        f"strategy `gradual` needs at least one to unfreeze; use 0..{n - 1}.")
    return cfg.freeze_layers


@register
class Gradual(Strategy):
    name = "gradual"

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        return gradual_floor(cfg, parts)
