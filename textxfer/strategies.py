"""Transfer strategies: decide what trains. One function, `apply_strategy`, reads the model's `Parts`.

- head:   only the classifier (and any parameter the checkpoint did not have, e.g. a new pooler) trains;
- freeze: the embeddings and the lower `freeze_layers` layers are frozen, the rest trains;
- lora:   LoRA adapters (peft) on the attention/MLP linears of all or the upper `lora_layers` layers,
          plus the head and any new parameter, which peft saves with the adapter (`modules_to_save`);
- full:   everything trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from textxfer.backbones import Parts, count_params, lora_target_regex
from textxfer.errors import UserError
from textxfer.recipe import StrategyConfig


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


def frozen_layers_for(cfg: StrategyConfig, parts: Parts) -> int:
    """How many lower layers the strategy freezes (-1: not even the embeddings)."""
    n = len(parts.layers)
    if cfg.name == "full":
        return -1
    if cfg.name == "head":
        return n
    if cfg.name == "freeze":
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
    if cfg.name == "lora":
        if cfg.lora_layers is None:
            return 0
        if parts.shared_layers and cfg.lora_layers != len(parts.layers):
            raise UserError("ALBERT shares its layer weights: `strategy.lora_layers` must be null for ALBERT.")
        return n - cfg.lora_layers
    if cfg.name == "gradual":  # the floor; textxfer.smalldata unfreezes the groups above it one by one
        from textxfer.smalldata import gradual_floor

        return gradual_floor(cfg, parts)
    raise UserError(f"Unknown strategy {cfg.name!r}: use head, freeze, lora, full or gradual.")


def apply_strategy(model: nn.Module, parts: Parts, cfg: StrategyConfig) -> Applied:
    """Set `requires_grad` (or wrap with peft) as the strategy says."""
    frozen = frozen_layers_for(cfg, parts)
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
            train = int(group.split(".")[1]) >= frozen if cfg.name != "lora" else False
        else:  # head group: the classifier always; the pretrained pooler/final norm under freeze and full
            on_top = not group_is_base(model, name)
            train = on_top or cfg.name in ("freeze", "full", "gradual")
        p.requires_grad_(train and not name.startswith(kept))
    if cfg.name != "lora":
        trainable, total = count_params(model)
        return Applied(model, frozen, trainable, total)
    return _apply_lora(model, parts, cfg, frozen)


def group_is_base(model: nn.Module, name: str) -> bool:
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and name.startswith(prefix + ".")


def _apply_lora(model: nn.Module, parts: Parts, cfg: StrategyConfig, frozen: int) -> Applied:
    from peft import LoraConfig, get_peft_model

    regex, _ = lora_target_regex(model, parts, cfg.lora.target_modules, cfg.lora_layers)
    task = None if getattr(model, "main_input_name", "input_ids") == "pixel_values" else "SEQ_CLS"
    lcfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=regex,
        modules_to_save=parts.head_modules(model), task_type=task, bias="none",
    )
    peft_model = get_peft_model(model, lcfg)
    # peft's LoRA wrapper of a Conv2d does not expose the convolution's geometry, which some forwards read
    # (MobileNetV2's TensorFlow-style padding reads `stride`, `kernel_size`, `dilation`): copy it over.
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Conv2d) and not isinstance(module, nn.Conv2d):
            for attr in ("stride", "padding", "dilation", "kernel_size", "groups", "padding_mode"):
                if attr not in module.__dict__ and not hasattr(type(module), attr):
                    setattr(module, attr, getattr(base, attr))
    # peft marks modules_to_save trainable; parameters new at load inside the base (e.g. a pooler) too.
    for name, p in peft_model.named_parameters():
        if any(name.endswith(n) for n in parts.new_params):
            p.requires_grad_(True)
    trainable, total = count_params(peft_model)
    return Applied(peft_model, frozen, trainable, total, is_peft=True)
