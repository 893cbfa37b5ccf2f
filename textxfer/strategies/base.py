"""What every transfer strategy shares: the `Strategy` interface, the `Applied` result, and the registry that maps
a recipe's `strategy.name` to its strategy, as PEFT maps method names to its tuners.

A strategy decides what trains. Each lives in its own module under `textxfer/strategies/methods/` and registers
itself with `@register`; adding one is that module plus its test."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass

from torch import nn

from textxfer.backbones.load import Parts, count_params
from textxfer.config.schema import StrategyConfig
from textxfer.core.errors import UserError


@dataclass
class Applied:
    """The model to train and what the strategy froze: `frozen_prefix` layers (plus embeddings) never change."""

    model: nn.Module
    frozen_prefix: int
    """How many lower layers are frozen together with the embeddings (-1: embeddings not frozen either)."""
    trainable: int
    total: int
    is_peft: bool = False

    def summary(self) -> str:
        share = 100.0 * self.trainable / max(self.total, 1)
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({share:.2f}%)"


class Strategy:
    """Freeze the embeddings and the lower `frozen_layers` layer groups, train the rest; subclasses say how many
    (`frozen_layers`), whether the pretrained pooler/final norm trains (`trains_pretrained_head`), or replace
    `apply` altogether (LoRA)."""

    name: str = ""
    trains_pretrained_head: bool = True
    """Whether the checkpoint's own pooler / final norm (the head group's pretrained part) trains."""
    trains_layers: bool = True
    """Whether the layer groups above the frozen ones train themselves (LoRA trains adapters on them instead)."""

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        """How many lower layer groups are frozen with the embeddings (-1: not even the embeddings)."""
        raise NotImplementedError

    def apply(self, model: nn.Module, parts: Parts, cfg: StrategyConfig) -> Applied:
        """Set `requires_grad` as the strategy says, then `wrap` the model (nothing to wrap but for LoRA)."""
        frozen = self.frozen_layers(cfg, parts)
        # Modules the checkpoint says must never train, whatever the strategy (the converted EfficientNet-Lite's
        # squeeze-excite layers are exact pass-throughs only while their weights stay as converted).
        kept = tuple(m + "." for m in getattr(model.config, "textxfer_frozen_modules", None) or ())
        for name, p in model.named_parameters():
            group = parts.group_of(name)
            if name in parts.new_params:
                train = True
            elif group == "embeddings":
                train = frozen < 0
            elif group.startswith("layer."):
                train = self.trains_layers and int(group.split(".")[1]) >= frozen
            else:  # head group: the new classifier always; the pretrained pooler/final norm as the strategy says
                train = not group_is_base(model, name) or self.trains_pretrained_head
            p.requires_grad_(train and not name.startswith(kept))
        return self.wrap(model, parts, cfg, frozen)

    def wrap(self, model: nn.Module, parts: Parts, cfg: StrategyConfig, frozen: int) -> Applied:
        """The model to train around `model` (itself unless the strategy adds modules)."""
        trainable, total = count_params(model)
        return Applied(model, frozen, trainable, total)


def group_is_base(model: nn.Module, name: str) -> bool:
    """Whether a parameter belongs to the pretrained body (under the model's `base_model_prefix`)."""
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and name.startswith(prefix + ".")


REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make the strategy available as `strategy.name: <cls.name>`."""
    REGISTRY[cls.name] = cls()
    return cls


def strategy_names() -> list[str]:
    _load_methods()
    return sorted(REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The registered strategy of that name; a clear error with the names there are otherwise."""
    _load_methods()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"Recipe key `strategy.name` is {name!r}; allowed values: "
                        f"{', '.join(repr(n) for n in sorted(REGISTRY))}.{hint}")
    return REGISTRY[name]


def _load_methods() -> None:
    """Import every module of `textxfer.strategies.methods` once, so that each registers its strategy."""
    if REGISTRY:
        return
    from textxfer.strategies import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")
