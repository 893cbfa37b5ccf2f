"""`head`: only the new classifier (and any parameter the checkpoint lacked, e.g. a new pooler) trains."""

from __future__ import annotations

from textxfer.backbones.load import Parts
from textxfer.config.schema import StrategyConfig
from textxfer.strategies.base import Strategy, register


@register
class Head(Strategy):
    name = "head"
    trains_pretrained_head = False

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        return len(parts.layers)
