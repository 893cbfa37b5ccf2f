"""Pooling layers a backbone gains for classification: mean pooling over token states (what sentence-transformers
bodies are trained for), and the pooling layer as part of the frozen body the prefix cache covers."""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import torch
from torch import nn

from textxfer.backbones.load import Parts
from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

POOL_GAIN = 1000.0
"""How much the average outweighs the first token's own state in the pooling layer (its share is 1/POOL_GAIN)."""
POOL_CONFIG_KEY = "textxfer_pooling"

# Linear layers of one encoder layer, by role (BERT/RoBERTa/ELECTRA/XLM-R, DistilBERT, DeBERTa-v2).
_ZERO = re.compile(r"(?:^|\.)(?:query|key|q_lin|k_lin|query_proj|key_proj|pos_proj|pos_q_proj|pos_key_proj|"
                   r"pos_query_proj)$")
_IDENTITY = re.compile(r"(?:^|\.)(?:value|v_lin|value_proj)$")
_ATTN_OUT = re.compile(r"(?:^|\.)(?:attention\.output\.dense|attention\.out_lin)$")
_FFN_OUT = re.compile(r"(?:^|\.)(?:(?<!attention\.)output\.dense|ffn\.lin2)$")


def pooling_path(model: nn.Module) -> str | None:
    return getattr(model.config, POOL_CONFIG_KEY, None)


def with_pooling_layer(model: nn.Module, parts: Parts) -> Parts:
    """`parts` with the fixed mean-pooling layer (if the model has one) as one more layer group: what a cache of
    the whole frozen body covers, so the head alone runs on it."""
    path = pooling_path(model)
    return dataclasses.replace(parts, layers=parts.layers + [path]) if path else parts


def known_pooling_layer(model: nn.Module, parts: Parts) -> Parts:
    """A checkpoint saved by textxfer with mean pooling: its last layer is the pooling layer, not a layer group."""
    path = pooling_path(model)
    if path and parts.layers and parts.layers[-1] == path:
        parts.layers = parts.layers[:-1]
    return parts


def add_mean_pooling(model: nn.Module, parts: Parts) -> Parts:
    """Append the fixed averaging layer (see the module docstring) and check that it averages exactly."""
    import copy

    if pooling_path(model):
        return parts  # already there (a textxfer model trained further)
    if parts.shared_layers:
        raise UserError("`model.pooling: mean` cannot be used with ALBERT (one shared layer applied N times: no "
                        "separate averaging layer can be appended). Use `model.pooling: cls`.")
    layer_list = model.get_submodule(parts.layers[-1].rsplit(".", 1)[0])
    if not isinstance(layer_list, nn.ModuleList):
        raise UserError(f"`model.pooling: mean` is not supported for `{type(model).__name__}`; use `cls`.")
    layer = copy.deepcopy(layer_list[-1])
    roles = {"zero": 0, "identity": 0, "attn_out": 0, "ffn_out": 0}
    with torch.no_grad():
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                if _ZERO.search(name):
                    module.weight.zero_()
                    roles["zero"] += 1
                elif _IDENTITY.search(name):
                    module.weight.copy_(torch.eye(*module.weight.shape))
                    roles["identity"] += 1
                elif _ATTN_OUT.search(name):
                    module.weight.copy_(POOL_GAIN * torch.eye(*module.weight.shape))
                    roles["attn_out"] += 1
                elif _FFN_OUT.search(name):
                    module.weight.zero_()
                    roles["ffn_out"] += 1
                if module.bias is not None:
                    module.bias.zero_()
            elif is_layer_norm(module):
                reset_layer_norm(module)
    if min(roles.values()) == 0:
        raise UserError(f"`model.pooling: mean` does not know the layer layout of `{model.config.model_type}` "
                        f"models (found {roles}); use `model.pooling: cls`.")
    for p in layer.parameters():
        p.requires_grad_(False)
    layer_list.append(layer)
    path = f"{parts.layers[-1].rsplit('.', 1)[0]}.{len(layer_list) - 1}"
    model.config.num_hidden_layers = len(layer_list)
    setattr(model.config, POOL_CONFIG_KEY, path)
    kept = list(getattr(model.config, "textxfer_frozen_modules", None) or [])
    model.config.textxfer_frozen_modules = kept + [path]
    _identity_pooler(model, parts)
    check_mean_pooling(model)
    log.info(f"model.pooling mean: appended the fixed averaging layer {path} (the classifier reads the mean of "
             "the token states)")
    return parts


@torch.no_grad()
def cut_pooling_to_first(model: nn.Module):
    """Only position 0 of the pooling layer is read (it holds the average), so where the model is run with
    gradients through that layer (the contrastive stage) its feed-forward runs on position 0 alone
    (`prefix_cache.cut_to_first`), which saves a good part of the stage's time. Tried in eval mode on random
    tokens, not assumed; the hook's handle, or None where position 0 would change (DistilBERT adds the residual
    outside the block)."""
    from textxfer.backbones.prefix_cache import cut_to_first

    path = pooling_path(model)
    prefix = getattr(model, "base_model_prefix", "")
    if not path or not hasattr(model, prefix):
        return None
    base = getattr(model, prefix)
    ids, mask = _probe_tokens(model)
    was_training = model.training
    model.eval()
    try:
        want = base(input_ids=ids, attention_mask=mask).last_hidden_state[:, :1]
        handle = cut_to_first(model.get_submodule(path))
        if handle is None:
            return None
        try:
            got = base(input_ids=ids, attention_mask=mask).last_hidden_state
        except Exception:
            got = None
        if got is None or got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            handle.remove()
            return None
        return handle
    finally:
        model.train(was_training)


def _identity_pooler(model: nn.Module, parts: Parts) -> None:
    """A pretrained BERT-style pooler (dense + tanh, trained for the CLS token) becomes identity + tanh."""
    prefix = getattr(model, "base_model_prefix", "")
    for name, module in model.named_modules():
        if name == f"{prefix}.pooler.dense" and isinstance(module, nn.Linear):
            if any(n.startswith(name + ".") for n in parts.new_params):
                return  # a new pooler: it trains as part of the head
            with torch.no_grad():
                module.weight.copy_(torch.eye(*module.weight.shape))
                module.bias.zero_()


def _probe_tokens(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random texts of 7 and 4 tokens (the second padded), on the model's device: what the pooling
    layer's checks run."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(int(getattr(model.config, "vocab_size", 100)), 6), (2, 7), generator=gen)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device)


@torch.no_grad()
def check_mean_pooling(model: nn.Module) -> None:
    """Position 0 of the appended layer must be LayerNorm(mean of the real tokens' states): refuse otherwise."""
    base = getattr(model, model.base_model_prefix)
    was_training = model.training
    model.eval()
    try:
        ids, mask = _probe_tokens(model)
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        before, pooled = out.hidden_states[-2], out.hidden_states[-1][:, 0]
        m = mask.unsqueeze(-1).to(before.dtype)
        mean = (before * m).sum(1) / m.sum(1)
        want = nn.functional.layer_norm(mean, mean.shape[-1:])
        err = float((pooled - want).abs().max())
    finally:
        model.train(was_training)
    if not math.isfinite(err) or err > 5e-2:
        raise UserError(f"`model.pooling: mean` could not be built exactly for `{model.config.model_type}` models "
                        f"(max deviation {err:.3g}); use `model.pooling: cls`.")


def is_layer_norm(module: nn.Module) -> bool:
    """torch's LayerNorm or a model's own (DeBERTa, some ports define their class)."""
    return isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__


@torch.no_grad()
def reset_layer_norm(module: nn.Module) -> None:
    """Identity scale and zero shift: a layer norm as freshly initialised."""
    if getattr(module, "weight", None) is not None:
        module.weight.fill_(1.0)
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
