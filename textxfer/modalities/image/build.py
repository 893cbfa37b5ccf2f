"""What the image modality does for the training loop: build the data, processor and model; decide between the
frozen-prefix cache and augmentation; give batch loaders; run the forward pass.

Augmentation or cache: cached features are computed once per image, so they cannot be re-augmented each epoch.
`data.augment: null` (default) lets the cache win when it applies (head, freeze, lora on upper layers: the
fast path, and what a linear probe wants anyway); `data.augment: true` turns the cache off and augments every
epoch; `false` never augments."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from textxfer.core.errors import UserError
from textxfer.modalities.image.cache import build_cache
from textxfer.modalities.image.splits import load_image_splits
from textxfer.modalities.image.transforms import ImageCollator, ImageTransforms, load_processor

if TYPE_CHECKING:
    from textxfer.modalities.text.batching import BatchPlan

log = logging.getLogger("textxfer")


def build(loop, adapt: Callable) -> None:
    """The image modality's build: data, processor, model, the strategy (through the loop's `adapt`). Sets what
    the loop reads later."""
    from accelerate.utils import set_seed

    from textxfer.backbones.load import load_classifier, resolve_model_name

    r = loop.recipe
    if loop.memory:
        raise UserError(f"Data given from Python (`{', '.join(f'{s}=' for s in loop.memory)}`) is for text "
                        "recipes for now; this one trains an image model. Write the image paths and labels "
                        "to a CSV file and point `data.train` at it.")
    loop.splits, loop.encoded = load_image_splits(r.data, r.training.seed)
    for note in loop.splits.notes:
        log.info(note)
    loop.labels = loop.splits.labels
    if len(loop.labels) < 2:
        raise UserError(f"The training images have only one class ({loop.labels}); a classifier needs two or more.")
    loop.model_path = resolve_model_name(r.model.name)
    loop.processor = load_processor(loop.model_path, r)
    loop.tokenizer = None
    loop.transforms = ImageTransforms(loop.processor)
    set_seed(r.training.seed)  # seeded right before the model is built: the new head is reproducible
    model, loop.parts = load_classifier(
        loop.model_path, loop.labels, task="image", revision=r.model.revision,
        trust_remote_code=r.model.trust_remote_code, dropout=r.model.dropout)
    if r.model.image_size:
        check_size(model, loop.transforms.size, r.model.name)
    loop.parts, loop.applied = adapt(model, loop.parts)  # strategy.reinit_layers, then the strategy
    loop.model = loop.applied.model
    log.info(f"model {r.model.name}: {len(loop.parts.layers)} layer groups; strategy {r.strategy.name}; "
             + loop.applied.summary())
    for name, split in loop.encoded.items():
        log.info(f"{name}: {len(split)} images from {split.source}")


def build_cache_and_augment(loop) -> dict[str, list] | None:
    """The frozen-prefix cache (`build_cache`), then whether training augments images: not over cached features,
    which are fixed (`data.augment` decides otherwise)."""
    r = loop.recipe
    features = build_cache(loop)
    loop.augment = bool(r.data.augment) or (r.data.augment is None and features is None)
    log.info(f"images: {loop.transforms.size[0]}x{loop.transforms.size[1]}; training augmentation "
             + ("on (random resized crop + flip)" if loop.augment else
                "off (the frozen-prefix cache serves fixed features)" if features is not None else "off"))
    return features


def check_size(model: nn.Module, size: tuple[int, int], name: str) -> None:
    """`model.image_size` must be a size the backbone runs at (ViT-style position embeddings fix theirs)."""
    was = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(pixel_values=torch.zeros(1, 3, *size))
    except Exception as e:  # the model's own complaint, passed on with the fix
        raise UserError(f"`model.image_size` {size[0]} does not fit `{name}`: {str(e).strip().splitlines()[0]} "
                        "Remove `model.image_size` or pick the checkpoint's own size.") from None
    finally:
        model.train(was)


def loader(loop, split: str, train: bool,
           batch_size: int) -> tuple[BatchPlan, torch.utils.data.DataLoader]:
    """(batch plan, DataLoader) over one split, like `Loop.loader` for text."""
    from textxfer.modalities.text.batching import BatchPlan

    r = loop.recipe
    data = loop.encoded[split]
    balanced = train and r.training.balanced_sampler
    plan = BatchPlan(np.zeros(len(data), dtype=np.int64), batch_size, seed=r.training.seed, shuffle=train,
                     group_by_length=False, classes=data.targets if balanced else None)
    features = loop.features.get(split) if loop.features else None
    collate = ImageCollator(data, loop.transforms, augment=train and loop.augment, seed=r.training.seed,
                            plan=plan, features=features)
    dl = torch.utils.data.DataLoader(range(len(data)), batch_sampler=plan, collate_fn=collate,
                                     num_workers=r.training.num_workers)
    return plan, dl


def logits(loop, batch: dict) -> torch.Tensor:
    """The model's logits for a batch: from cached frozen-prefix features when the cache is installed (the
    stem is replaced, so it gets 1x1 dummy pixels), else from the batch's pixels."""
    if loop.cache is not None:
        prefix = batch["prefix"]
        loop.cache.slot.current = prefix.to(loop.acc.device, torch.float32)
        pixel_values = torch.zeros((prefix.shape[0], 3, 1, 1), device=loop.acc.device)  # the stem is cached
    else:
        pixel_values = batch["pixel_values"]
    return loop.model(pixel_values=pixel_values).logits
