"""`freeze`: the embeddings and the lower `strategy.freeze_layers` layer groups stay frozen (and are cached), the
rest and the head train."""

from __future__ import annotations

from textxfer.backbones.load import Parts
from textxfer.config.schema import StrategyConfig
from textxfer.core.errors import UserError
from textxfer.strategies.base import Strategy, register


@register
class Freeze(Strategy):
    name = "freeze"

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        n = len(parts.layers)
        if parts.shared_layers and cfg.freeze_layers not in (0, n):
            raise UserError(
                "ALBERT shares ONE set of layer weights across all its layers, so 'freeze the lower N layers' "
                f"cannot be done: use `strategy.freeze_layers: 0` (train the shared layer) or {n} (freeze it)."
            )
        if cfg.freeze_layers > n:
            raise UserError(
                f"`strategy.freeze_layers` is {cfg.freeze_layers}, but this model has only {n} layer groups. "
                f"Use 0..{n} ({n} freezes every layer, like strategy `head` but training the pooler)."
            )
        return cfg.freeze_layers
