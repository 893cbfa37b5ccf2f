"""What the image modality does for the training loop: read the images, load the model; decide between the
frozen-prefix cache and augmentation; give batch loaders; run the forward pass.

Augmentation or cache: cached features are computed once per image, so they cannot be re-augmented each epoch.
`data.augment: null` (default) lets the cache win when it applies (head, freeze, lora on upper layers: the
fast path, and what a linear probe wants anyway); `data.augment: true` turns the cache off and augments every
epoch; `false` never augments."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from textxfer.backbones.load import Parts
from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.data.splits import Splits
from textxfer.modalities.base import Cached
from textxfer.modalities.image.cache import build_cache
from textxfer.modalities.image.files import ImageSplit
from textxfer.modalities.image.splits import load_image_splits
from textxfer.modalities.image.transforms import ImageCollator, ImageTransforms

if TYPE_CHECKING:
    from textxfer.modalities.text.batching import BatchPlan

log = logging.getLogger("textxfer")


def read(recipe: Recipe, memory: dict) -> tuple[Splits, dict[str, ImageSplit]]:
    """The image splits and their examples (every file checked once), from the recipe's files or folders."""
    if memory:
        raise UserError(f"Data given from Python (`{', '.join(f'{s}=' for s in memory)}`) is for text "
                        "recipes for now; this one trains an image model. Write the image paths and labels "
                        "to a CSV file and point `data.train` at it.")
    splits, encoded = load_image_splits(recipe.data, recipe.training.seed)
    for name, split in encoded.items():
        log.info(f"{name}: {len(split)} images from {split.source}")
    return splits, encoded


def load_model(recipe: Recipe, path: str, splits: Splits, transforms: ImageTransforms) -> tuple[nn.Module, Parts]:
    """An image classifier over the splits' classes, seeded; `model.image_size` checked against it."""
    from accelerate.utils import set_seed

    from textxfer.backbones.load import load_classifier

    r = recipe
    set_seed(r.training.seed)  # seeded right before the model is built: the new head is reproducible
    model, parts = load_classifier(path, splits.labels, task="image", revision=r.model.revision,
                                   trust_remote_code=r.model.trust_remote_code, dropout=r.model.dropout)
    if r.model.image_size:
        check_size(model, transforms.size, r.model.name)
    return model, parts


def cache_and_augment(loop, transforms: ImageTransforms, processor) -> tuple[Cached | None, bool]:
    """The frozen-prefix cache (`build_cache`), and whether training augments images: not over cached features,
    which are fixed (`data.augment` decides otherwise)."""
    r = loop.recipe
    cached = build_cache(loop, transforms, processor)
    augment = bool(r.data.augment) or (r.data.augment is None and cached is None)
    log.info(f"images: {transforms.size[0]}x{transforms.size[1]}; training augmentation "
             + ("on (random resized crop + flip)" if augment else
                "off (the frozen-prefix cache serves fixed features)" if cached is not None else "off"))
    return cached, augment


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


def loader(loop, split: str, train: bool, batch_size: int, transforms: ImageTransforms,
           augment: bool) -> tuple[BatchPlan, torch.utils.data.DataLoader]:
    """(batch plan, DataLoader) over one split: images transformed (and augmented when training and `augment`)."""
    from textxfer.modalities.text.batching import BatchPlan

    r = loop.recipe
    data = loop.encoded[split]
    balanced = train and r.training.balanced_sampler
    plan = BatchPlan(np.zeros(len(data), dtype=np.int64), batch_size, seed=r.training.seed, shuffle=train,
                     group_by_length=False, classes=data.targets if balanced else None)
    features = loop.features.get(split) if loop.features else None
    collate = ImageCollator(data, transforms, augment=train and augment, seed=r.training.seed,
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
