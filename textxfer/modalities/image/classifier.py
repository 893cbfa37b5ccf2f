"""A saved image classifier for prediction and evaluation: the model directory a run wrote, scored the way
`pipeline("image-classification", DIR)` scores it but batched, and the images to predict, checked first."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from textxfer.backbones.load import SAFE_LOADING
from textxfer.core.errors import UserError
from textxfer.core.inputs import as_list, check_batch_size, check_top_k, shown
from textxfer.modalities.image.files import IMAGE_SUFFIXES, open_image, probe, to_rgb

if TYPE_CHECKING:
    from collections.abc import Iterable

    from PIL.Image import Image

    ImageInputs = str | os.PathLike | Image | Iterable[str | os.PathLike | Image]
    """What `ImageClassifier.predict` reads: one image (a file path or a PIL image) or an iterable of them."""

BATCH_SIZE = 32
"""Images per forward pass when `batch_size` is not given."""


class ImageClassifier:
    """A saved image classifier: what `pipeline("image-classification", DIR)` computes, batched.
    `textxfer.load(DIR).predict(["a.jpg", "b.png"])`; `predict("a.jpg")` is one image: a list of one result."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from textxfer.core.layout import find_model_dir

        self.dir = find_model_dir(model_dir)
        self.processor = AutoImageProcessor.from_pretrained(self.dir)
        self.model = AutoModelForImageClassification.from_pretrained(self.dir, **SAFE_LOADING)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]

    @torch.inference_mode()
    def probabilities(self, images: ImageInputs, batch_size: int | None = BATCH_SIZE) -> np.ndarray:
        """One row of label probabilities (softmax) per image (see `predict` for what `images` accepts)."""
        images = as_images(images)
        batch_size = check_batch_size(batch_size, BATCH_SIZE)
        out = np.zeros((len(images), len(self.labels)), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = [read_image(x, start + i) for i, x in enumerate(images[start:start + batch_size])]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            out[start:start + len(chunk)] = self.model(pixel_values=pixels).logits.float().softmax(-1).cpu().numpy()
        return out

    def predict(self, images: ImageInputs, top_k: int = 1, batch_size: int | None = BATCH_SIZE) -> list[list[dict]]:
        """Per image, the top k {label, score}, best first.

        `images` is a list of image file paths (`str` or `pathlib.Path`) and PIL images, or any iterable of them
        (tuple, generator, pandas Series), read in order; a lone path or PIL image is one image and gives a list
        of one result (the same shape as `predict([image])`). A path that does not exist or is not a readable
        image is a `UserError` naming its position and path, as is an element that is neither. `top_k` is a whole
        number of 1 or more (above the number of labels: every label); `batch_size` a whole number of 1 or more,
        or None for the default."""
        top_k = check_top_k(top_k)
        return [[{"label": self.labels[int(i)], "score": float(p[i])} for i in np.argsort(-p)[:top_k]]
                for p in self.probabilities(images, batch_size)]


def as_images(value: ImageInputs, name: str = "images") -> list:
    """The images to predict as a list of `Path`s and PIL images: a lone path or PIL image is one image; any
    other iterable is read in order (`textxfer.core.inputs.as_list` refuses None, dicts and the like). Paths are
    checked to exist and be files here, before any work; whether they decode is found when they are read
    (`read_image`), so each image is decoded once."""
    from PIL import Image

    items = as_list(value, name, "an image path or a PIL image", (str, os.PathLike, Image.Image))
    out = []
    for i, x in enumerate(items):
        if isinstance(x, Image.Image):
            out.append(x)
            continue
        if not isinstance(x, (str, os.PathLike)) or isinstance(os.fspath(x), bytes):
            hint = " (a numpy array: PIL.Image.fromarray(array))" if hasattr(x, "shape") else ""
            raise UserError(f"{name}[{i}] is {shown(x)}, not an image: give image file paths (str or pathlib.Path) "
                            f"or PIL images{hint}.")
        if not os.fspath(x).strip():
            raise UserError(f"{name}[{i}] is an empty path: give the path of an image file, or drop the element.")
        path = Path(x).expanduser()
        why = "does not exist" if not path.exists() else "is not a file" if not path.is_file() else None
        if why:
            raise UserError(f"{name}[{i}] is {path}, which {why}. Give the paths of readable image files "
                            f"({', '.join(IMAGE_SUFFIXES)}).")
        out.append(path)
    return out


def read_image(item, position: int, name: str = "images"):
    """An element of `as_images` as an RGB PIL image, as `pipeline()` makes it; a file that does not decode is a
    `UserError` naming its position, its path and what is wrong with it (`probe`)."""
    from PIL import Image

    if not isinstance(item, Path):
        return to_rgb(item)
    try:
        return open_image(item)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        why = probe(item) or f"could not be read ({str(e) or type(e).__name__})"
        raise UserError(f"{name}[{position}] is {item}, which {why}. Replace the file or leave it out.") from None


def image_inputs(source: str) -> list[Path]:
    """Images to predict: one image, a folder (every image below it, sorted), or a list of paths (a text file,
    or `-` for stdin, one per line). Each is checked first, so a bad file is named before any work."""
    if source == "-":
        paths = [Path(line.strip()) for line in sys.stdin if line.strip()]
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not paths:
                raise UserError(f"Folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        elif path.suffix.lower() in (".txt", ".lst"):
            paths = [Path(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            paths = [path]
    if not paths:
        raise UserError("No image paths to predict: give an image, a folder of images, or a list of paths.")
    for p in paths:
        why = probe(p)
        if why:
            raise UserError(f"Cannot predict {p}: it {why}. Give readable image files.")
    return paths
