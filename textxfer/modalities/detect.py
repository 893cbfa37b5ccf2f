"""Which modality a recipe or a saved model is: one answer for train, predict, evaluate and info."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError
from textxfer.core.layout import find_model_dir
from textxfer.deploy.manifest import is_export, read_manifest

if TYPE_CHECKING:  # the modalities import torch: `textxfer.load` of an exported model must run without it
    from textxfer.modalities.image.modality import ImageModality
    from textxfer.modalities.text.modality import TextModality


def task_of(recipe: Recipe) -> str:
    """`image` or `text`: `model.task`, or for `auto` whether the checkpoint only has an image-classification
    model in transformers. Anything unreadable is left to the text path, which reports it."""
    if recipe.model.task != "auto":
        return recipe.model.task
    return checkpoint_task(recipe.model.name, recipe.model.revision, recipe.model.trust_remote_code)


def checkpoint_task(name: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """`image` or `text` for a checkpoint (a Hub id, a folder, `package:`, `convert:`)."""
    if name.startswith("convert:"):
        return "image"
    try:
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        from textxfer.backbones.load import load_config, resolve_model_name

        config = load_config(resolve_model_name(name), revision, trust_remote_code)
    except (UserError, OSError, ValueError):
        return "text"
    image = type(config) in AutoModelForImageClassification._model_mapping
    text = type(config) in AutoModelForSequenceClassification._model_mapping
    return "image" if image and not text else "text"


def modality_of(recipe: Recipe) -> TextModality | ImageModality:
    """The modality a recipe trains."""
    if task_of(recipe) == "image":
        from textxfer.modalities.image.modality import ImageModality

        return ImageModality()
    from textxfer.modalities.text.modality import TextModality

    return TextModality()


def saved_task(model_dir: str | Path) -> str:
    """`image` or `text` for a saved model: a run directory or its model folder (image models are saved with an
    image processor, text models with a tokenizer), or an exported folder (`textxfer export`; its manifest says)."""
    if exported(model_dir):
        return read_manifest(model_dir)[1].task
    return "image" if (find_model_dir(model_dir) / "preprocessor_config.json").is_file() else "text"


def load_saved(model_dir: str | Path, device: str | None = None, max_length: int | None = None):
    """The saved classifier of a run directory, model folder or exported folder, text or image
    (`textxfer.load`); `max_length` overrides the token limit a text model records. An exported folder runs on
    onnxruntime without torch (`device` is onnxruntime's choice there: CUDA where onnxruntime-gpu has it)."""
    if exported(model_dir):
        from textxfer.deploy.text import OnnxTextClassifier

        return OnnxTextClassifier(model_dir, max_length=max_length)
    if saved_task(model_dir) == "image":
        from textxfer.modalities.image.classifier import ImageClassifier

        return ImageClassifier(model_dir, device=device)
    from textxfer.modalities.text.predict import Classifier

    return Classifier(model_dir, device=device, max_length=max_length)


def exported(path: str | Path) -> bool:
    """An exported folder, or an .onnx file (read through the manifest next to it, or refused for lacking one)."""
    return is_export(path) or Path(path).suffix.lower() == ".onnx"
