"""Knobs that matter with a few labelled examples, all reading the one layer-group description (`Parts`).

- `model.pooling: mean`: the classifier reads the average of the token states instead of the first token's.
  BERT-style `...ForSequenceClassification` heads only read position 0, so textxfer appends one fixed layer to
  the encoder that writes the average into position 0: its query/key projections are zero (uniform attention over
  the real tokens, padding masked as usual), its value projection is the identity and its output projection a
  large multiple of it, so after the residual and LayerNorm position 0 holds LayerNorm(mean + first/1000); its
  feed-forward adds zero. The saved model is an ordinary checkpoint with one more layer: plain `transformers`
  computes exactly what textxfer trained and evaluated (checked numerically when the layer is built). The layer
  never trains (`textxfer_frozen_modules` in the config); a BERT pooler, trained for the CLS token, becomes the
  identity (then tanh) so the classifier reads the averaged state itself.
- `strategy.reinit_layers`: fresh (seeded) weights for the top k layer groups.
- `training.head_l2`: an L2 penalty on the head's weight matrices (scikit-learn's), so that a head trained to
  convergence on a few well-separated embeddings stays calibrated.
- `training.layer_lr_decay`: AdamW groups whose learning rate shrinks layer by layer downwards.
- `training.head_warmup_epochs` and `strategy.name: gradual`: which layer groups train at each optimizer step, a
  pure function of the step (so resuming a run lands on the same schedule).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from textxfer.backbones.load import Parts
from textxfer.backbones.pooling import (
    add_mean_pooling,
    is_layer_norm,
    known_pooling_layer,
    pooling_path,
    reset_layer_norm,
)
from textxfer.config.schema import Recipe, StrategyConfig
from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")


# ------------------------------------------------------------------------------------------ model set-up

def prepare_model(model: nn.Module, parts: Parts, recipe: Recipe) -> Parts:
    """Before the strategy is applied: mean pooling and re-initialised top layers. Returns the (updated) parts."""
    parts = known_pooling_layer(model, parts)
    if recipe.model.pooling == "mean":
        parts = add_mean_pooling(model, parts)
    elif pooling_path(model):
        log.info("model: this checkpoint already mean-pools (a textxfer pooling layer); `model.pooling: cls` "
                 "keeps it as it is")
    if recipe.strategy.reinit_layers:
        reinit_top_layers(model, parts, recipe.strategy)
    return parts


def reinit_top_layers(model: nn.Module, parts: Parts, cfg: StrategyConfig) -> None:
    """Fresh weights (normal(0, initializer_range), norms 1/0) for the top `reinit_layers` layer groups."""
    k, n = cfg.reinit_layers, len(parts.layers)
    if k > n:
        raise UserError(f"`strategy.reinit_layers` is {k}, but the model has {n} layer groups: use 0..{n}.")
    if parts.shared_layers:
        raise UserError("`strategy.reinit_layers` cannot be used with ALBERT (its layers share one set of weights).")
    floor = cfg.freeze_layers if cfg.name in ("freeze", "gradual") else 0
    if n - k < floor:
        raise UserError(f"`strategy.reinit_layers: {k}` would re-initialise layers inside the frozen lower "
                        f"`freeze_layers: {floor}` (random weights that never train). Use at most {n - floor}.")
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        for path in parts.layers[n - k:]:
            for module in model.get_submodule(path).modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
                elif is_layer_norm(module):
                    reset_layer_norm(module)
    log.info(f"strategy.reinit_layers: re-initialised the top {k} layer group(s) (seeded)")


# ------------------------------------------------------------------------------------------ optimisation


def is_new_head(model: nn.Module, parts: Parts, clean: str) -> bool:
    """A parameter (name without a PEFT prefix) of the head on top, not of the pretrained body (its pooler included)."""
    return parts.group_of(clean) == "head" and not clean.startswith(getattr(model, "base_model_prefix", "\0") + ".")


# ------------------------------------------------------------------------------------------ what trains when


