"""Checks across recipe keys that types alone cannot express, with the key path and how to fix it."""

from __future__ import annotations

import re

from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError


def validate(recipe: Recipe) -> None:
    """Cross-field checks that types alone cannot express."""
    if not recipe.model.name:
        raise UserError("Recipe key `model.name` is missing: give a checkpoint folder or a Hub id.")
    if recipe.data.train is None:
        raise UserError("Recipe key `data.train` is missing: give the training data file (or, from Python, a "
                        "DataFrame: `textxfer.train(recipe, train=df)`).")
    check_finite(recipe)
    t = recipe.training
    if not 0 <= t.seed < 2**32:
        raise UserError(f"Recipe key `training.seed` must be in [0, 2**32 - 1] (what numpy and torch seed with), not "
                        f"{t.seed}.")
    if not recipe.data.label_delimiter:
        raise UserError("Recipe key `data.label_delimiter` is empty: give the text between a multi-label cell's "
                        "labels (`,` by default, `|`, `;`...).")
    if t.epochs <= 0:
        raise UserError(f"Recipe key `training.epochs` must be > 0, not {t.epochs}.")
    if t.batch_size < 1:
        raise UserError(f"Recipe key `training.batch_size` must be >= 1, not {t.batch_size}.")
    if t.gradient_accumulation_steps < 1 or t.batch_size % t.gradient_accumulation_steps:
        raise UserError(
            f"`training.batch_size` ({t.batch_size}) must be a multiple of `training.gradient_accumulation_steps` "
            f"({t.gradient_accumulation_steps})."
        )
    if t.distributed_timeout <= 0:
        raise UserError(f"Recipe key `training.distributed_timeout` must be > 0 seconds, not {t.distributed_timeout}.")
    if t.learning_rate <= 0:
        raise UserError(f"Recipe key `training.learning_rate` must be > 0, not {t.learning_rate}.")
    if not 0 <= t.warmup_ratio < 1:
        raise UserError(f"Recipe key `training.warmup_ratio` must be in [0, 1), not {t.warmup_ratio}.")
    if t.head_l2 < 0:
        raise UserError(f"Recipe key `training.head_l2` must be >= 0 (0 = no penalty), not {t.head_l2}.")
    if recipe.strategy.freeze_layers < 0:
        raise UserError("Recipe key `strategy.freeze_layers` must be >= 0.")
    for k in ("validation_split", "test_split"):
        v = getattr(recipe.data, k)
        if not 0 <= v < 1:
            raise UserError(f"Recipe key `data.{k}` must be in [0, 1), not {v}.")
    if recipe.model.max_length < 8:
        raise UserError("Recipe key `model.max_length` must be at least 8 tokens.")
    if isinstance(t.checkpoint_every, int) and t.checkpoint_every < 1:
        raise UserError(f"Recipe key `training.checkpoint_every` must be >= 1, `epoch` or null, not {t.checkpoint_every}.")
    if t.keep_checkpoints < 1:
        raise UserError(f"Recipe key `training.keep_checkpoints` must be >= 1, not {t.keep_checkpoints}.")
    if t.early_stopping is not None and t.early_stopping.patience < 1:
        raise UserError(f"Recipe key `training.early_stopping.patience` must be >= 1, not {t.early_stopping.patience}.")
    if t.early_stopping is not None and t.early_stopping.min_delta < 0:
        raise UserError("Recipe key `training.early_stopping.min_delta` must be >= 0.")
    cache_budget_bytes(t.cache_budget)
    validate_small_data(recipe)
    validate_self_training(recipe)
    validate_sharding(recipe)


def check_finite(node, prefix: str = "") -> None:
    """Every number of the recipe is finite: `nan` or `inf` (YAML's `.nan`, `.inf`, or `1e999`) passes every range
    check (nan compares false) and fails deep inside training."""
    import dataclasses
    import math

    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"Recipe key `{key}` is {value}: give a finite number.")
        if dataclasses.is_dataclass(value):
            check_finite(value, key + ".")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def cache_budget_bytes(value: int | str | None) -> int | None:
    """`training.cache_budget` in bytes: a number of bytes, a size (`2GB`, `500MB`, `1.5GiB`), `auto` (a quarter
    of this machine's memory) or None (no limit). Anything else: UserError naming the key."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    if isinstance(value, str) and value.strip().lower() == "auto":
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    m = _SIZE.match(value) if isinstance(value, str) else None
    unit = (m.group(2) or "").lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"Recipe key `training.cache_budget` is {value!r}: give a size such as `2GB` or `500MB`, a "
                        "number of bytes above 0, `auto` (a quarter of this machine's memory) or null (no limit).")
    return int(float(m.group(1)) * _UNITS[unit])


def validate_self_training(recipe: Recipe) -> None:
    """`self_training` ranges, and what learning from `data.unlabelled` does not handle yet."""
    st = recipe.self_training
    if st.rounds != "auto" and st.rounds < 1:  # the reader lets only `auto` or a whole number through
        raise UserError(f"Recipe key `self_training.rounds` must be `auto` or an integer >= 1, not {st.rounds!r}.")
    if st.per_class < 1:
        raise UserError(f"Recipe key `self_training.per_class` must be >= 1, not {st.per_class}.")
    if not 0 <= st.min_confidence < 1:
        raise UserError(f"Recipe key `self_training.min_confidence` must be in [0, 1), not {st.min_confidence}.")
    if st.max_unlabelled is not None and st.max_unlabelled < 1:
        raise UserError(f"Recipe key `self_training.max_unlabelled` must be >= 1 or null, not {st.max_unlabelled}.")
    if st.contrastive_epochs is not None and st.contrastive_epochs <= 0:
        raise UserError(f"Recipe key `self_training.contrastive_epochs` must be > 0 or null, not "
                        f"{st.contrastive_epochs}.")
    if recipe.data.unlabelled is not None and recipe.data.multi_label:
        raise UserError("`data.unlabelled` with `data.multi_label: true`: self-training handles one label per text "
                        "for now. Remove `data.unlabelled`, or set `data.multi_label: false` if each text has one label.")


def validate_small_data(recipe: Recipe) -> None:
    """Range checks of the small-data keys: pooling, re-initialised layers, warm-up, gradual unfreezing, the
    contrastive stage."""
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


SHARDED_STRATEGIES = ("full", "lora")
"""Strategies whose trained weights are worth sharding: the whole body (full) or adapters beside it (lora)."""


def validate_sharding(recipe: Recipe) -> None:
    """`training.sharding` only where it shards what trains, with options that name what they should."""
    t = recipe.training
    if t.sharding is None:
        return
    if recipe.strategy.name not in SHARDED_STRATEGIES:
        raise UserError(
            f"Recipe key `training.sharding: {t.sharding}` shards the weights of a large backbone for the strategies "
            f"{' and '.join(SHARDED_STRATEGIES)}; strategy `{recipe.strategy.name}` trains too little of it to need "
            "sharding. Set `training.sharding: null` (plain DDP), or `strategy.name: full` or `lora`."
        )
    wrap = t.sharding_options.wrap
    if wrap is not None and (not wrap or any(not name.strip() for name in wrap)):
        raise UserError(f"Recipe key `training.sharding_options.wrap` must name module classes (e.g. [BertLayer]) "
                        f"or be null for the backbone's layer class, not {wrap!r}.")
    if t.sharding == "deepspeed" and t.gradient_accumulation_steps != 1:
        raise UserError(
            f"`training.sharding: deepspeed` needs `training.gradient_accumulation_steps: 1`, not "
            f"{t.gradient_accumulation_steps}: DeepSpeed steps the optimizer inside every backward pass, so "
            "textxfer's micro-batches would each make a step. Use more processes, or `training.sharding: fsdp`."
        )
