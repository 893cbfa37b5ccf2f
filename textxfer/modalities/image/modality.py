"""Images as the training loop sees them: image folders and tables, the image processor and transforms, the
frozen-prefix cache over a CNN's or ViT's lower stages, pixel batches and the forward pass (`build`)."""

from __future__ import annotations

from pathlib import Path

import torch

from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.data.splits import Splits
from textxfer.modalities.base import Cached
from textxfer.modalities.image import build as image_build
from textxfer.modalities.image.splits import fingerprint
from textxfer.modalities.image.transforms import ImageTransforms, load_processor


class ImageModality:
    """Single-label image classification with a transformers image model. Keeps the image processor, the
    transforms built from it and whether training augments (decided with the cache)."""

    name = "image"

    def __init__(self) -> None:
        self.processor = None
        self.transforms: ImageTransforms | None = None
        self.augment = False
        self._encoded: dict = {}

    def read(self, recipe: Recipe, memory: dict) -> Splits:
        if getattr(recipe.model, "pooling", "cls") != "cls":
            raise UserError("`model.pooling` is for text models (it averages token states); image models pool "
                            "with their own head. Remove it from the recipe.")
        if getattr(recipe.training, "contrastive", None) is not None:
            raise UserError("`training.contrastive` is implemented for text models only; remove it for image "
                            "recipes.")
        splits, self._encoded = image_build.read(recipe, memory)
        return splits

    def load_model(self, recipe: Recipe, path: str, splits: Splits):
        self.processor = load_processor(path, recipe)
        self.transforms = ImageTransforms(self.processor)
        return image_build.load_model(recipe, path, splits, self.transforms)

    def encode(self, recipe: Recipe, splits: Splits) -> dict:
        """The images of each split (read and checked by `read`), loaded lazily by the batches."""
        return self._encoded

    def build_cache(self, loop) -> Cached | None:
        cached, self.augment = image_build.cache_and_augment(loop, self.transforms, self.processor)
        return cached

    def loader(self, loop, split: str, train: bool, batch_size: int):
        return image_build.loader(loop, split, train, batch_size, self.transforms, self.augment)

    def logits(self, loop, batch: dict) -> torch.Tensor:
        return image_build.logits(loop, batch)

    def fingerprints(self, loop) -> dict[str, str]:
        """Per split, a hash of its images' bytes and labels: changed images are changed data."""
        return {split: fingerprint(loop.encoded[split]) for split, _ in loop.splits.items()}

    def save_preprocessor(self, loop, folder: Path) -> None:
        """The image processor next to the model (resized where `model.image_size` says)."""
        self.processor.save_pretrained(folder)
