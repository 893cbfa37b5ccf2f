"""A saved image classifier for prediction and evaluation: the model directory a run wrote, scored the way
`pipeline("image-classification", DIR)` scores it but batched, and the images to predict, checked first."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from textxfer.backbones.load import SAFE_LOADING
from textxfer.core.errors import UserError
from textxfer.modalities.image.files import IMAGE_SUFFIXES, open_image, probe, to_rgb


class ImageClassifier:
    """A saved image classifier: what `pipeline("image-classification", DIR)` computes, batched."""

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
    def probabilities(self, images: list, batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(images), len(self.labels)), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = [open_image(x) if isinstance(x, (str, Path)) else to_rgb(x)
                     for x in images[start:start + batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            out[start:start + len(chunk)] = self.model(pixel_values=pixels).logits.float().softmax(-1).cpu().numpy()
        return out

    def predict(self, images: list, top_k: int = 1, batch_size: int = 32) -> list[list[dict]]:
        """Per image, the top k {label, score}."""
        return [[{"label": self.labels[int(i)], "score": float(p[i])} for i in np.argsort(-p)[: max(1, top_k)]]
                for p in self.probabilities(images, batch_size)]


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
