"""A SetFit-style contrastive stage: tune the body so that same-class examples embed close together, then train
the classifier (by default the head alone, on the tuned body's cached embeddings).

SetFit (1.x, by default) trains on every unique pair of training sentences, the smaller of the positive and
negative sets repeated to match the larger, and runs both sentences of every pair through the model: about n^2
forward/backward passes for n examples (16,640 for 128 examples), quadratic in the data (setfit #472/#249);
`num_iterations` caps it at 40 pairs per example. Here the pairs are formed inside each batch instead: a batch of B
examples gives B(B-1)/2 pairs for B forward passes. Batches are built from small same-class groups, so every
example meets positives even with many classes. A pass over the data costs one forward/backward per example:
linear in the data size, whatever the number of classes.

Multi-label data: a pair is positive when the two examples share a label (as SetFit), or when neither has any (SetFit
counts those negative); negative otherwise. The same-label groups are formed by each example's rarest label.

The embedding compared is what the classifier will read (position 0 of the last layer: the averaged state with
`model.pooling: mean`, the first token's with `cls`), so the stage optimises exactly the features the saved model
classifies. The frozen-prefix cache serves the frozen lower layers during the stage as during training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textxfer.backbones.load import Parts, count_params, unwrap_peft
from textxfer.core.errors import UserError
from textxfer.core.progress import ProgressReport

log = logging.getLogger("textxfer")


# ------------------------------------------------------------------------------------------ pairs and loss

def pair_batches(targets: np.ndarray, batch_size: int, per_class: int, seed: int, epoch: int,
                 lengths: np.ndarray | None = None, mega: int = 8) -> list[list[int]]:
    """One pass over the examples as batches built from shuffled same-class groups of `per_class` examples.

    Every example appears once per pass; the work is linear in the number of examples. With `lengths`, groups of
    similar length share a batch (within windows of `mega` batches, then the batch order is shuffled): far less
    padding, the same pairs in expectation."""
    rng = np.random.default_rng([seed, epoch, 7919])
    targets = np.asarray(targets)
    groups = []
    for y in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == y))
        groups += [idx[i:i + per_class] for i in range(0, len(idx), per_class)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    if lengths is not None and groups:
        window = max(1, mega * batch_size // per_class)
        lengths = np.asarray(lengths)
        groups = [g for i in range(0, len(groups), window)
                  for g in sorted(groups[i:i + window], key=lambda g: -int(lengths[g].max()))]
    flat = np.concatenate(groups) if groups else np.zeros(0, int)
    batches = [flat[i:i + batch_size].tolist() for i in range(0, len(flat), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:  # a lone example has no pair: join it to the batch before
        batches[-2] += batches.pop()
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def same_label(targets: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """1.0 where an example of `targets` and one of `others` (default: `targets` again) form a positive pair: the
    same class, or for multi-hot rows a shared label (two rows without any label also count as the same)."""
    others = targets if others is None else others
    if targets.dim() == 1:
        return (targets[:, None] == others[None, :]).float()
    a, b = (targets > 0).float(), (others > 0).float()
    none_a, none_b = a.sum(1) == 0, b.sum(1) == 0
    return ((a @ b.T > 0) | (none_a[:, None] & none_b[None, :])).float()


def group_keys(targets: np.ndarray) -> np.ndarray:
    """One class per example for forming same-class groups: the class itself, or a multi-hot row's rarest label
    in this training set (-1: no label), as the data's stratified draws count them."""
    from textxfer.data.sampling import strata

    targets = np.asarray(targets)
    if targets.ndim == 1:
        return targets.astype(np.int64)
    on = targets > 0
    return np.asarray(strata([np.flatnonzero(row).tolist() for row in on], True, on.sum(0)), dtype=np.int64)


def has_negative_pair(targets: np.ndarray) -> bool:
    """Whether some two examples are of different classes (multi-hot: share no label), so the stage can learn."""
    kinds = torch.as_tensor(np.unique(np.asarray(targets), axis=0))  # distinct classes or label sets
    return any(not bool(same_label(kinds[i:i + 1024], kinds).all()) for i in range(0, len(kinds), 1024))


def pair_loss(embeddings: torch.Tensor, targets: torch.Tensor, kind: str = "cosine",
              temperature: float = 0.1) -> torch.Tensor:
    """Loss over every pair of the batch (`targets`: class ids, or multi-hot rows, see `same_label`). `cosine`:
    (cos - same)^2, positives and negatives weighted equally; `supcon`: supervised contrastive (each example's
    softmax over the others, positives as targets)."""
    z = F.normalize(embeddings.float(), dim=-1)
    sim = z @ z.T
    n = len(targets)
    same = same_label(targets)
    off = 1.0 - torch.eye(n, device=sim.device)
    pos, neg = same * off, (1.0 - same) * off
    if kind == "cosine":
        err = (sim - same) ** 2
        terms = [(err * m).sum() / m.sum() for m in (pos, neg) if m.sum() > 0]
        return torch.stack(terms).mean()
    logits = sim / temperature - 1e9 * torch.eye(n, device=sim.device)
    logp = logits.log_softmax(-1)
    has = pos.sum(1) > 0
    if not bool(has.any()):  # no positive pair in this batch: push everything apart a little
        return (sim * neg).sum() / neg.sum().clamp(min=1)
    return -((logp * pos).sum(1)[has] / pos.sum(1)[has]).mean()


# ------------------------------------------------------------------------------------------ the stage

def _encoder(model: nn.Module) -> nn.Module:
    root = unwrap_peft(model)
    return getattr(root, root.base_model_prefix)


def _is_head(model: nn.Module, parts: Parts, name: str) -> bool:
    """The classifier on top (not the body), as strategy `head` sees it."""
    clean = name.removeprefix("base_model.model.")
    if "lora_" in clean:
        return False
    base = getattr(unwrap_peft(model), "base_model_prefix", "\0") + "."
    return clean in parts.new_params or (parts.group_of(clean) == "head" and not clean.startswith(base))


@dataclass
class StageContext:
    """What the stage reads from the run (`Loop.stage_context`): nothing else, and it assigns nothing back."""

    training: Any  # the recipe's `training` section (`training.contrastive` is the stage's own)
    labels: list[str]
    model: nn.Module
    parts: Parts
    applied: Any  # the strategy as applied (`textxfer.strategies.apply.Applied`)
    train: Any  # the training split, encoded
    modality: Any  # tokenizer and input names
    acc: Any  # the run's Accelerator: device, processes, autocast
    prefix_cache: Callable[[Parts, int, list[str]], Any]  # in-memory frozen-prefix cache (`Cached`) or None
    cache: Any = None  # the stage's own cache while it tunes
    history: dict = field(default_factory=dict)


@dataclass
class StageResult:
    """What the stage gives back: the strategy as it now stands (with `then: head`, the body frozen), whether the
    body was tuned, and the history entries (`contrastive_stage`, `contrastive`)."""

    applied: Any
    tuned: bool
    history: dict


def embed(ctx: StageContext, batch: dict) -> torch.Tensor:
    """The pooled embedding the classifier reads: position 0 of the encoder's last layer."""
    inputs = {k: batch[k] for k in ctx.modality.input_names if k in batch}
    if ctx.cache is not None:
        ctx.cache.slot.current = batch["prefix"].to(ctx.acc.device, torch.float32)
    return _encoder(ctx.model)(**inputs).last_hidden_state[:, 0]


CHUNK_OVERHEAD_TOKENS = 64
"""The fixed cost of one more forward pass in `embed_chunked`, counted as padded tokens: a round figure, not tuned
(it splits a batch of 16 SST-2 phrases into 2 chunks, 624 padded tokens into 348)."""


def embed_chunked(ctx: StageContext, collate, idx: list[int]) -> torch.Tensor:
    """The embeddings of a pair batch (rows in the order of `idx`), computed in length-sorted chunks
    (`padding_chunks`) so that short texts are not padded to the batch's longest; the loss then pairs every
    example of the whole batch, as with one padded pass."""
    from textxfer.modalities.text.batching import padding_chunks

    lengths = np.asarray([len(ctx.train.input_ids[i]) for i in idx])
    chunks = padding_chunks(lengths, CHUNK_OVERHEAD_TOKENS)
    zs = []
    for chunk in chunks:
        batch = {k: v.to(ctx.acc.device) for k, v in collate([idx[i] for i in chunk]).items()}
        with ctx.acc.autocast():
            zs.append(embed(ctx, batch))
    order = torch.as_tensor([i for chunk in chunks for i in chunk], device=zs[0].device)
    return torch.cat(zs)[torch.argsort(order)]


def run_stage(ctx: StageContext) -> StageResult:
    """Contrastive body tuning on the training split; then (with `then: head`) the body is frozen. The caller
    caches what trains next (`Loop.build`)."""
    from textxfer.backbones.pooling import cut_pooling_to_first

    c = ctx.training.contrastive
    enc = ctx.train
    targets = np.asarray(enc.targets)
    if not has_negative_pair(targets):
        if targets.ndim == 1:
            present = np.unique(targets)
            what = f"only one class ({ctx.labels[int(present[0])] if len(present) else 'none'})"
        else:
            shared = [ctx.labels[j] for j in np.flatnonzero((targets > 0).all(0))]
            what = (f"every example carrying the label {shared[0]!r}" if shared else
                    "every pair of examples sharing a label")
        raise UserError(f"`training.contrastive` learns from pairs of examples of different classes, but the training "
                        f"data has {what}. Add examples of other classes, or remove `training.contrastive`.")
    if ctx.acc.num_processes > 1:
        raise UserError("`training.contrastive` runs in one process for now (the stage does not synchronise "
                        "processes); train with one process, or remove `training.contrastive`.")
    ctx.model.to(ctx.acc.device)
    if len(enc) < c.min_examples:
        log.info(f"contrastive stage: skipped ({len(enc)} training examples, fewer than "
                 f"`training.contrastive.min_examples` {c.min_examples})")
        ctx.history["contrastive_stage"] = {"skipped": True, "examples": len(enc), "min_examples": c.min_examples}
        applied = freeze_body(ctx) if c.then == "head" else ctx.applied  # the pretrained body: the usual cache
        return StageResult(applied, False, ctx.history)
    cut = cut_pooling_to_first(unwrap_peft(ctx.model))  # before any cache: the check runs the whole model
    try:
        tune(ctx, targets)
    finally:
        if ctx.cache is not None:
            ctx.cache.uninstall()
            ctx.cache = None
        if cut is not None:
            cut.remove()
    applied = freeze_body(ctx) if c.then == "head" else ctx.applied
    return StageResult(applied, True, ctx.history)


def tune(ctx: StageContext, targets: np.ndarray) -> None:
    """The stage's optimisation: pair batches over the training split. `targets`: class ids, or multi-hot rows."""
    from textxfer.engine.optim import depth_of, fused_adamw
    from textxfer.modalities.text.batching import Collator
    from textxfer.strategies.apply import set_frozen_eval

    c, t = ctx.training.contrastive, ctx.training
    enc, model, parts = ctx.train, ctx.model, ctx.parts
    features = None
    if t.cache != "off":  # the stage reads only train: cache the frozen prefix of train alone
        cached = ctx.prefix_cache(parts, ctx.applied.frozen_prefix, ["train"])
        if cached is not None:
            cached.cache.install()
            ctx.cache, features = cached.cache, cached.features["train"]
    n_layers = len(parts.layers)
    body = [(name, p) for name, p in model.named_parameters() if p.requires_grad and not _is_head(model, parts, name)]
    if not body:
        raise UserError("`training.contrastive` found no body parameter to tune under this strategy; use strategy "
                        "freeze (with freeze_layers below the layer count), full, lora or gradual.")
    groups: dict[float, list] = {}
    for name, p in body:
        depth = depth_of(parts.group_of(name.removeprefix("base_model.model.")), n_layers)
        rate = c.learning_rate * (t.layer_lr_decay ** depth if depth is not None else 1.0)
        groups.setdefault(rate, []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": lr} for lr, ps in groups.items()],
                                  lr=c.learning_rate, weight_decay=t.weight_decay, **fused_adamw(model))
    lengths = enc.lengths if t.group_by_length else None
    keys = group_keys(targets)
    per_epoch = len(pair_batches(keys, c.batch_size, c.same_class_per_batch, t.seed, 0, lengths))
    total = max(1, math.ceil(per_epoch * c.epochs), c.min_steps)
    warm = max(1, int(0.1 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 10% of the steps, then linear decay
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    collate = Collator(enc, ctx.modality.tokenizer.pad_token_id, features=features)
    started = time.time()
    log.info(f"contrastive stage: {total / per_epoch:g} passes over {len(enc)} examples ({c.batch_size - 1} pairs per example "
             f"per pass, {total} steps), {sum(p.numel() for _, p in body):,} body parameters, loss {c.loss}")
    history = ctx.history.setdefault("contrastive", [])
    step, running, seen, epoch = 0, 0.0, 0, 0
    params = [p for _, p in body]
    shown = ProgressReport("contrastive stage", total, "steps", show=ctx.acc.is_main_process)
    while step < total:
        model.train()
        set_frozen_eval(unwrap_peft(model), parts, ctx.applied.frozen_prefix)
        for idx in pair_batches(keys, c.batch_size, c.same_class_per_batch, t.seed, epoch, lengths):
            z = embed_chunked(ctx, collate, idx)
            loss = pair_loss(z, torch.as_tensor(targets[idx], device=z.device), c.loss, c.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            running, seen = running + float(loss.detach()), seen + 1
            if step % t.log_every == 0 or step == total:
                history.append({"step": step, "epoch": round(step / per_epoch, 4), "loss": running / seen,
                                "learning_rate": scheduler.get_last_lr()[0]})
                shown.note(loss=f"{running / seen:.4f}")
                running, seen = 0.0, 0
            shown.update(1)
            if step >= total:
                break
        epoch += 1
    shown.close()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.time() - started
    loss_text = f"{history[-1]['loss']:.4f}" if history else "n/a"
    log.info(f"contrastive stage: done in {seconds:.1f}s (last loss {loss_text})")
    ctx.history["contrastive_stage"] = {"seconds": round(seconds, 2), "steps": total,
                                        "body_params": sum(p.numel() for p in params), "loss": c.loss}


def freeze_body(ctx: StageContext):
    """Only the classifier trains from here on: the strategy as it then stands (`Applied`)."""
    from textxfer.strategies.apply import Applied

    model = ctx.model
    for name, p in model.named_parameters():
        if p.requires_grad and not _is_head(model, ctx.parts, name):
            p.requires_grad_(False)
    trainable, total = count_params(model)
    applied = Applied(model, len(ctx.parts.layers), trainable, total, is_peft=ctx.applied.is_peft)
    log.info(f"contrastive stage: body frozen; the classifier trains on its embeddings ({applied.summary()})")
    return applied
