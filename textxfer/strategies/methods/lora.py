"""`lora`: LoRA adapters (peft) on the attention/MLP linears of all layers or the upper `strategy.lora_layers`,
plus the head and any parameter new at load, which peft saves with the adapter (`modules_to_save`)."""

from __future__ import annotations

from torch import nn

from textxfer.backbones.load import Parts, count_params, lora_target_regex
from textxfer.config.schema import StrategyConfig
from textxfer.core.errors import UserError
from textxfer.strategies.base import Applied, Strategy, register


@register
class Lora(Strategy):
    name = "lora"
    trains_pretrained_head = False
    trains_layers = False

    def frozen_layers(self, cfg: StrategyConfig, parts: Parts) -> int:
        """The layers below the adapted ones (0 with adapters everywhere): their outputs never change."""
        n = len(parts.layers)
        if cfg.lora_layers is None:
            return 0
        if parts.shared_layers and cfg.lora_layers != n:
            raise UserError("ALBERT shares its layer weights: `strategy.lora_layers` must be null for ALBERT.")
        return n - cfg.lora_layers

    def wrap(self, model: nn.Module, parts: Parts, cfg: StrategyConfig, frozen: int) -> Applied:
        """peft's LoRA model: adapters on the target linears, the head saved with them."""
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
