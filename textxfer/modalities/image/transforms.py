"""Pixels from pictures: the checkpoint's image processor (optionally resized to `model.image_size`), the
evaluation and training transforms built on it, and the collator that turns example indices into batches.

Evaluation runs the processor as saved (resize, crop, rescale, normalise: what `pipeline()` runs); training takes a
random resized crop + horizontal flip to the processor's output size (Pillow), then only the processor's own
rescale/normalise, so the statistics always match the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import torch

from textxfer.backbones.prefix_cache import pad_features
from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.modalities.image.files import ImageSplit


def load_processor(name: str, recipe: Recipe):
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name, revision=recipe.model.revision,
                                                       trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(
            f"Could not load the image processor of `{name}`: {str(e).strip().splitlines()[0]} An image "
            "checkpoint needs its preprocessor_config.json (resize, crop and normalisation) next to config.json."
        ) from None
    return resized_processor(processor, recipe.model.image_size) if recipe.model.image_size else processor


def resized_processor(processor, size: int):
    """The same processor making `size` x `size` pictures: with a centre crop, the resize before it scales by the
    same factor (the crop keeps its share of the picture); without one, the resize goes straight to the size."""
    if size < 16:
        raise UserError(f"`model.image_size` is {size}; use at least 16 pixels.")
    settings = processor.to_dict()
    old = settings.get("size") or {}
    if settings.get("do_center_crop") and settings.get("crop_size"):
        crop = settings["crop_size"]
        scale = size / min(crop.get("height", size), crop.get("width", size))
        settings["size"] = {k: max(size, round(v * scale)) if k in ("shortest_edge", "height", "width") else v
                            for k, v in old.items() if v is not None}
        settings["crop_size"] = {"height": size, "width": size}
    elif "shortest_edge" in old and settings.get("crop_pct") is not None:  # ConvNeXt: resize, then crop_pct crop
        settings["size"] = {"shortest_edge": size}
    else:
        settings["size"] = {"height": size, "width": size}
    settings.pop("image_processor_type", None)
    new = type(processor).from_dict(settings)
    if output_size(new) != (size, size):
        raise UserError(f"`model.image_size: {size}`: this checkpoint's {type(processor).__name__} makes "
                        f"{output_size(new)} pictures with it. Remove `model.image_size`.")
    return new


def output_size(processor) -> tuple[int, int]:
    """(height, width) the processor's evaluation transform produces, found by running it (every size
    convention - height/width, shortest_edge + crop, crop_pct - gives its answer the same way)."""
    from PIL import Image

    shapes = {tuple(processor(images=Image.new("RGB", wh), return_tensors="pt")["pixel_values"].shape[-2:])
              for wh in ((61, 97), (97, 61))}
    if len(shapes) != 1:
        raise UserError(
            f"The image processor ({type(processor).__name__}) makes pictures of different sizes {sorted(shapes)} "
            "depending on their shape, so they cannot be batched. Give it a crop size (`crop_size`/`do_center_crop`) "
            "or a fixed `size` with height and width in preprocessor_config.json."
        )
    return shapes.pop()


def random_resized_crop(image, size: tuple[int, int], rng: np.random.Generator, resample: int,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """The Inception-style crop (a random 8-100% of the area at a random 3:4..4:3 aspect), resized to `size`."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:  # no fit in 10 tries: the central crop at the nearest allowed aspect
        aspect = width / height
        w, h = (width, int(round(width / ratio[0]))) if aspect < ratio[0] else \
            (int(round(height * ratio[1])), height) if aspect > ratio[1] else (width, height)
        top, left = (height - h) // 2, (width - w) // 2
    return image.resize((size[1], size[0]), resample=resample, box=(left, top, left + w, top + h))


class ImageTransforms:
    """Evaluation: the processor as saved (what `pipeline()` runs). Training: random resized crop + flip to the
    processor's output size, then the processor with its resize and crop off (rescale and normalise only)."""

    def __init__(self, processor):
        from PIL import Image

        self.processor = processor
        self.size = output_size(processor)
        resample = getattr(processor, "resample", None)
        self.resample = int(resample) if resample is not None else int(Image.Resampling.BILINEAR)

    def eval(self, images: list) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def train(self, images: list, rngs: list[np.random.Generator]) -> torch.Tensor:
        from PIL import Image

        crops = []
        for image, rng in zip(images, rngs, strict=True):
            crop = random_resized_crop(image, self.size, rng, self.resample)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crops.append(crop)
        return self.processor(images=crops, return_tensors="pt", do_resize=False,
                              do_center_crop=False)["pixel_values"]


class ImageCollator:
    """Indices -> a batch: `pixel_values` (augmented or not), or the cached frozen-prefix output as `prefix`."""

    def __init__(self, split: ImageSplit, transforms: ImageTransforms, augment: bool = False, seed: int = 0,
                 plan=None, features: list | None = None, with_index: bool = True):
        self.split, self.transforms, self.augment = split, transforms, augment
        self.seed, self.plan, self.features, self.with_index = seed, plan, features, with_index

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {"targets": torch.as_tensor(self.split.targets[indices])}
        if self.features is not None:
            batch["prefix"] = pad_features([self.features[i] for i in indices])
        else:
            images = [self.split.load(i) for i in indices]
            if self.augment:
                epoch = self.plan.epoch if self.plan is not None else 0
                rngs = [np.random.default_rng([self.seed, epoch, i]) for i in indices]  # same per (epoch, image)
                batch["pixel_values"] = self.transforms.train(images, rngs)
            else:
                batch["pixel_values"] = self.transforms.eval(images)
        if self.with_index:
            batch["index"] = torch.as_tensor(indices, dtype=torch.long)
        return batch
