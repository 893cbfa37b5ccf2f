"""Images as the training loop sees them: image folders and tables, the image processor and transforms, the
frozen-prefix cache over a CNN's or ViT's lower stages, pixel batches and the forward pass (`build`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from textxfer.core.errors import UserError
from textxfer.modalities.image import build as image_build
from textxfer.modalities.image.splits import fingerprint


class ImageModality:
    """Single-label image classification with a transformers image model."""

    name = "image"

    def build(self, loop, adapt: Callable) -> None:
        r = loop.recipe
        if getattr(r.model, "pooling", "cls") != "cls":
            raise UserError("`model.pooling` is for text models (it averages token states); image models pool "
                            "with their own head. Remove it from the recipe.")
        if getattr(r.training, "contrastive", None) is not None:
            raise UserError("`training.contrastive` is implemented for text models only; remove it for image "
                            "recipes.")
        image_build.build(loop, adapt)

    def build_cache(self, loop) -> dict[str, list] | None:
        return image_build.build_cache_and_augment(loop)

    def loader(self, loop, split: str, train: bool, batch_size: int):
        return image_build.loader(loop, split, train, batch_size)

    def logits(self, loop, batch: dict) -> torch.Tensor:
        return image_build.logits(loop, batch)

    def fingerprints(self, loop) -> dict[str, str]:
        """Per split, a hash of its images' bytes and labels: changed images are changed data."""
        return {split: fingerprint(loop.encoded[split]) for split, _ in loop.splits.items()}

    def save_preprocessor(self, loop, folder: Path) -> None:
        """The image processor next to the model (resized where `model.image_size` says)."""
        loop.processor.save_pretrained(folder)
