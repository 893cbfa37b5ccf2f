"""`full`: everything trains."""

from __future__ import annotations

from textxfer.backbones.load import Parts
from textxfer.config.schema import StrategyConfig
from textxfer.strategies.base import Strategy, register


@register
class Full(Strategy):
    name = "full"

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        return -1
