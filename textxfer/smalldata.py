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

import dataclasses
import logging
import math
import re

import torch
from torch import nn

from textxfer.backbones import Parts
from textxfer.errors import UserError
from textxfer.recipe import Recipe, StrategyConfig

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


# ------------------------------------------------------------------------------------------ recipe checks

def validate_recipe(recipe: Recipe) -> None:
    """Range checks of the small-data keys (called by `recipe.validate`)."""
    t, s = recipe.training, recipe.strategy
    if not 0 < t.layer_lr_decay <= 1:
        raise UserError(f"Recipe key `training.layer_lr_decay` must be in (0, 1] (1 = no decay), not {t.layer_lr_decay}.")
    if t.head_warmup_epochs < 0:
        raise UserError(f"Recipe key `training.head_warmup_epochs` must be >= 0, not {t.head_warmup_epochs}.")
    if t.head_warmup_epochs and t.head_warmup_epochs >= t.epochs:
        raise UserError(f"`training.head_warmup_epochs` ({t.head_warmup_epochs}) must be less than `training.epochs` "
                        f"({t.epochs}), or the body never trains; use strategy `head` to train only the head.")
    if isinstance(s.unfreeze_every, int) and s.unfreeze_every < 1:
        raise UserError(f"Recipe key `strategy.unfreeze_every` must be >= 1 step or `epoch`, not {s.unfreeze_every}.")
    if s.reinit_layers < 0:
        raise UserError(f"Recipe key `strategy.reinit_layers` must be >= 0, not {s.reinit_layers}.")
    if s.reinit_layers and s.name in ("head", "lora"):
        raise UserError(f"`strategy.reinit_layers: {s.reinit_layers}` re-initialises layers that strategy `{s.name}` "
                        "would then never train (random features). Use strategy freeze, full or gradual with it, "
                        "or set reinit_layers to 0.")
    if recipe.model.pooling == "mean" and s.name == "lora" and recipe.save_adapter:
        raise UserError("`model.pooling: mean` adds an averaging layer to the model, which a LoRA adapter saved on "
                        "its own (`save_adapter: true`) would not carry: loaded on the original checkpoint it would "
                        "pool differently. Use `save_adapter: false` (the merged model has it) or `pooling: cls`.")
    c = t.contrastive
    if c is not None:
        if c.epochs <= 0:
            raise UserError(f"Recipe key `training.contrastive.epochs` must be > 0, not {c.epochs}.")
        if c.batch_size < 2:
            raise UserError(f"Recipe key `training.contrastive.batch_size` must be >= 2 (pairs are formed within a "
                            f"batch), not {c.batch_size}.")
        if not 1 <= c.same_class_per_batch <= c.batch_size:
            raise UserError(f"Recipe key `training.contrastive.same_class_per_batch` must be 1..batch_size "
                            f"({c.batch_size}), not {c.same_class_per_batch}.")
        if c.min_steps < 0:
            raise UserError(f"Recipe key `training.contrastive.min_steps` must be >= 0, not {c.min_steps}.")
        if c.learning_rate <= 0 or c.temperature <= 0:
            raise UserError("Recipe keys `training.contrastive.learning_rate` and `.temperature` must be > 0.")
        if s.name == "head":
            raise UserError("`training.contrastive` tunes the body, but strategy `head` freezes all of it. Use "
                            "strategy `freeze` (e.g. freeze_layers: 2: the lower layers stay frozen and cached), "
                            "`full`, `lora` or `gradual`, or remove `training.contrastive`.")


# ------------------------------------------------------------------------------------------ model set-up

def prepare_model(model: nn.Module, parts: Parts, recipe: Recipe) -> Parts:
    """Before the strategy is applied: mean pooling and re-initialised top layers. Returns the (updated) parts."""
    parts = _known_pooling_layer(model, parts)
    if recipe.model.pooling == "mean":
        parts = add_mean_pooling(model, parts)
    elif _pooling_path(model):
        log.info("model: this checkpoint already mean-pools (a textxfer pooling layer); `model.pooling: cls` "
                 "keeps it as it is")
    if recipe.strategy.reinit_layers:
        reinit_top_layers(model, parts, recipe.strategy)
    return parts


def _pooling_path(model: nn.Module) -> str | None:
    return getattr(model.config, POOL_CONFIG_KEY, None)


def with_pooling_layer(model: nn.Module, parts: Parts) -> Parts:
    """`parts` with the fixed mean-pooling layer (if the model has one) as one more layer group: what a cache of
    the whole frozen body covers, so the head alone runs on it."""
    path = _pooling_path(model)
    return dataclasses.replace(parts, layers=parts.layers + [path]) if path else parts


def _known_pooling_layer(model: nn.Module, parts: Parts) -> Parts:
    """A checkpoint saved by textxfer with mean pooling: its last layer is the pooling layer, not a layer group."""
    path = _pooling_path(model)
    if path and parts.layers and parts.layers[-1] == path:
        parts.layers = parts.layers[:-1]
    return parts


def add_mean_pooling(model: nn.Module, parts: Parts) -> Parts:
    """Append the fixed averaging layer (see the module docstring) and check that it averages exactly."""
    import copy

    if _pooling_path(model):
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
    (`features.cut_to_first`; the stage on SST-2 with 8 per class: 3.1 -> 2.5 s). Tried in eval mode on random
    tokens, not assumed; the hook's handle, or None where position 0 would change (DistilBERT adds the residual
    outside the block)."""
    from textxfer.features import cut_to_first

    path = _pooling_path(model)
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


# ------------------------------------------------------------------------------------------ optimisation

def depth_of(group: str, n_layers: int) -> int | None:
    """How far below the top layer group a parameter group is (0: top layer; n: embeddings; None: head)."""
    if group == "embeddings":
        return n_layers
    if group.startswith("layer."):
        return n_layers - 1 - int(group.split(".")[1])
    return None


def param_groups(loop) -> list[dict]:
    """AdamW groups of the run: the usual ones, or with `layer_lr_decay` < 1 one group per layer group."""
    from textxfer.training import param_groups as plain_groups

    t = loop.recipe.training
    if t.layer_lr_decay >= 1.0:
        return plain_groups(loop.model, loop.parts, t.learning_rate, t.head_learning_rate, t.weight_decay)
    return layerwise_groups(loop.model, loop.parts, t.learning_rate, t.head_learning_rate, t.weight_decay,
                            t.layer_lr_decay)


def layerwise_groups(model: nn.Module, parts: Parts, lr: float, head_lr: float | None, weight_decay: float,
                     decay: float) -> list[dict]:
    """Learning rate lr x decay^depth per layer group (the head and pooler at lr, or head_lr for the new head)."""
    n = len(parts.layers)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        group = parts.group_of(clean)
        depth = depth_of(group, n)
        new_head = is_new_head(model, parts, clean)
        rate = (head_lr or lr) if new_head else lr * (decay ** depth if depth is not None else 1.0)
        no_decay = p.ndim < 2 or "norm" in name.lower()
        key = ("new-head" if new_head else group, no_decay)
        entry = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                        "lr": rate, "name": f"{key[0]}{' (no decay)' if no_decay else ''}"})
        entry["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-groups[k]["lr"], k))]


def is_new_head(model: nn.Module, parts: Parts, clean: str) -> bool:
    """A parameter (name without a PEFT prefix) of the head on top, not of the pretrained body (its pooler included)."""
    return parts.group_of(clean) == "head" and not clean.startswith(getattr(model, "base_model_prefix", "\0") + ".")


def head_weight_matrices(model: nn.Module, parts: Parts) -> list[nn.Parameter]:
    """The new head's weight matrices (not its biases, not the pretrained pooler): what `training.head_l2` penalises."""
    out = []
    for name, p in model.named_parameters():
        clean = name.removeprefix("base_model.model.")
        if p.ndim >= 2 and is_new_head(model, parts, clean) and "lora_" not in clean:
            out.append(p)
    return out


@torch.no_grad()
def add_head_l2(params: list[nn.Parameter], coefficient: float) -> None:
    """Add the gradient of 1/2 x coefficient x ||W||^2 (once the processes' gradients are summed: exact under DDP
    and accumulation); parameters frozen at this step have no gradient and are left alone."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(p, alpha=coefficient)


# ------------------------------------------------------------------------------------------ what trains when

class Schedule:
    """Which parameters train at a given optimizer step: head warm-up, then the gradual unfreezing order.

    Parameters outside the current set get `requires_grad` off only for the duration of that step, so everything
    else (best-weight copies, checkpoints) always sees the full set of parameters the run trains."""

    def __init__(self, loop):
        t, s = loop.recipe.training, loop.recipe.strategy
        self.loop = loop
        spe = max(loop.steps_per_epoch, 1)
        self.warmup_steps = int(round(t.head_warmup_epochs * spe))
        self.gradual = s.name == "gradual"
        self.every = spe if s.unfreeze_every == "epoch" else int(s.unfreeze_every)
        n = len(loop.parts.layers)
        self.n = n
        self.floor = loop.applied.frozen_prefix if self.gradual else 0
        model = loop.acc.unwrap_model(loop.model)
        self.params: list[tuple[str, nn.Parameter, int | None]] = []
        for name, p in model.named_parameters():
            if p.requires_grad:
                clean = name.removeprefix("base_model.model.")
                self.params.append((name, p, depth_of(loop.parts.group_of(clean), n)))

    def groups_open(self, step: int) -> int | None:
        """How many layer groups (from the top) train at this step: 0 = head only; None = all the strategy trains."""
        if step < self.warmup_steps:
            return 0
        if not self.gradual:
            return None
        return min(1 + (step - self.warmup_steps) // self.every, self.n - self.floor)

    def describe(self, step: int) -> str:
        k = self.groups_open(step)
        if k is None:
            return "body and head"
        return "head only" if k == 0 else f"head + top {k} layer group(s)"

    def trains(self, depth: int | None, step: int) -> bool:
        k = self.groups_open(step)
        if k is None or depth is None:
            return True
        return depth < k

    def wrap(self, train_step):
        last = {"text": None}

        def step_with_schedule(indices):
            step = self.loop.progress.step
            text = self.describe(step)
            if text != last["text"]:
                log.info(f"step {step}: training {text}")
                last["text"] = text
            off = [p for _, p, depth in self.params if not self.trains(depth, step)]
            for p in off:
                p.requires_grad_(False)
            try:
                return train_step(indices)
            finally:
                for p in off:
                    p.requires_grad_(True)
        return step_with_schedule


def install_schedule(loop) -> None:
    """Gate `loop.train_step` by the head warm-up / gradual unfreezing schedule (nothing to do otherwise)."""
    t, s = loop.recipe.training, loop.recipe.strategy
    if not t.head_warmup_epochs and s.name != "gradual":
        return
    if loop.acc.num_processes > 1:
        raise UserError("`training.head_warmup_epochs` and strategy `gradual` change which parameters train during "
                        "the run, which DDP does not allow; train them with one process.")
    schedule = Schedule(loop)
    loop.schedule = schedule
    loop.train_step = schedule.wrap(loop.train_step)
    if s.name == "gradual":
        log.info(f"strategy gradual: head + top layer group first, one more group every {schedule.every} steps "
                 f"(after {schedule.warmup_steps} head-only steps), down to layer {schedule.floor}")
