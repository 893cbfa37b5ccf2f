"""Image files and where they come from: image folders (`split/<class>/<image>`), CSV/TSV/JSONL/Parquet tables
with an image-path column, `hub:<id>[:split]` image datasets and `sklearn:digits`, each read into an
`ImageListing`; every file is decoded once (`check_image_files`) before any model is loaded, so a bad file is
named up front rather than halfway through training. Pictures become RGB exactly as transformers' `load_image`
makes them, so training sees what `pipeline("image-classification")` sees at inference."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("textxfer")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".parquet")
MAX_LISTED = 5  # bad files named in one error message (all of them go to the log)


def to_rgb(image: Image) -> Image:
    """What transformers' `load_image` does (EXIF rotation, then RGB), so training matches `pipeline()`.
    Palette images with transparency go through RGBA first: same pixels, without Pillow's warning."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def open_image(path: str | Path) -> Image:
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

    def load(self, i: int) -> Image:
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

    def load(self) -> Image:
        return to_rgb(self.dataset[self.index][self.column])


@dataclass
class ImageListing:
    """One recipe value as read: items, raw labels, names, where each came from (for messages)."""

    items: list
    raw: list[str]
    names: list[str]
    source: str
    where: list[str]
    class_names: list[str] | None = None
    class_dirs: dict[str, Path] = field(default_factory=dict)


def is_excluded(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) if "/" in p else fnmatch.fnmatchcase(name, p) for p in patterns)


def _read_folder(root: Path, split: str, patterns: list[str], hits: set[str]) -> ImageListing:
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
    items, raw, names, others = [], [], [], []
    dirs = {}
    for c in classes:
        files = []
        for dirpath, dirnames, filenames in os.walk(c):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
        kept = []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if patterns and is_excluded(rel, patterns):
                hits.add(rel)
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:  # a README.txt, Thumbs.db: not examples (as predict reads)
                others.append(rel)
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
    if others:
        log.warning(f"{root}: {len(others)} file(s) in the class folders are not images by their names and are left "
                    f"out ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}; images: "
                    f"{', '.join(IMAGE_SUFFIXES)})")
    return ImageListing(items, raw, names, str(root), [str(f) for f in items], class_dirs=dirs)


def _read_table(path: Path, cfg: DataConfig, split: str, patterns: list[str], hits: set[str]) -> ImageListing:
    """A CSV/TSV/JSONL/JSON/Parquet file with an image-path column and a label column, read by the same readers
    as text tables (`textxfer.data.tables`: encodings, delimiters, header, the same errors naming file and row)."""
    from textxfer.data.rows import pick_column
    from textxfer.data.tables import decode_file, format_of, read_delimited, read_json, read_parquet

    notes: list[str] = []
    fmt = format_of(path, cfg)
    if fmt == "parquet":
        table = read_parquet(path)
    else:
        content = decode_file(path, cfg, notes)
        if not content.strip():
            raise UserError(f"Image list {path} (recipe key `data.{split}`) is empty. Add one row per image.")
        if fmt in ("csv", "tsv"):
            table = read_delimited(path, content, cfg, fmt, notes)
        elif fmt in ("json", "jsonl"):
            table = read_json(path, content, fmt == "jsonl")
        else:
            raise UserError(f"`data.{split}` is {path}, read as `{fmt}`: an image list is a CSV/TSV/JSON Lines/JSON/"
                            "Parquet table with an image-path column. Set `data.format` to one of those.")
    if len(table) == 0:
        raise UserError(f"Image list {path} (recipe key `data.{split}`) has no rows. Add one row per image.")
    cells = pick_column(table, cfg.image_column, "image_column")
    labels = pick_column(table, cfg.label_column, "label_column")
    items, raw, names, where = [], [], [], []
    for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
        row = table.where(i)
        if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
            raise UserError(f"{row}: the image path (column `{cfg.image_column}`) is empty. Fill it in or "
                            "delete the row.")
        if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
            raise UserError(f"{row}: the label (column `{cfg.label_column}`) is empty. Fill it in or delete the row.")
        text = str(cell).strip()
        if patterns and is_excluded(text.replace("\\", "/"), patterns):
            hits.add(text)
            continue
        p = Path(text).expanduser()
        p = p if p.is_absolute() else path.parent / p
        items.append(p)
        raw.append(str(label).strip())
        names.append(str(p))
        where.append(f"{row} ({text})")
    return ImageListing(items, raw, names, str(path), where)


def _read_hub(spec: str, cfg: DataConfig, split: str) -> ImageListing:
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
    return ImageListing(items, raw, names, f"hub:{repo}:{split_name}", names, class_names=class_names)


def _read_digits() -> ImageListing:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as grayscale images, shipped with it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = [Image.fromarray(np.round(img * (255 / 16)).astype(np.uint8), mode="L") for img in digits.images]
    names = [f"sklearn:digits#{i}" for i in range(len(items))]
    return ImageListing(items, [str(int(t)) for t in digits.target], names, "sklearn:digits", names,
                 class_names=[str(i) for i in range(10)])


def read_images(value: Any, cfg: DataConfig, split: str, hits: set[str]) -> ImageListing:
    patterns = list(cfg.exclude_images or [])
    if isinstance(value, dict):  # {label: folder of images}
        parts = []
        for label, where in value.items():
            folder = Path(str(where)).expanduser()
            if not folder.is_dir():
                raise UserError(f"`data.{split}.{label}` is {folder}, which is not a folder of images.")
            r = _read_folder_as_class(folder, str(label), patterns, hits)
            parts.append(r)
        return ImageListing([i for r in parts for i in r.items], [x for r in parts for x in r.raw],
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


def _read_folder_as_class(folder: Path, label: str, patterns: list[str], hits: set[str]) -> ImageListing:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    kept = [f for f in files if not (patterns and is_excluded(f.relative_to(folder).as_posix(), patterns))]
    hits.update(f.relative_to(folder).as_posix() for f in files if f not in kept)
    if not kept:
        raise UserError(f"Class folder {folder} (label `{label}`) holds no images. Add images to it or drop it.")
    return ImageListing(kept, [label] * len(kept), [str(f) for f in kept], str(folder), [str(f) for f in kept],
                 class_dirs={label: folder})


def check_image_files(read: ImageListing, cfg: DataConfig, split: str) -> tuple[ImageListing, list[str]]:
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
    kept = ImageListing([read.items[i] for i in keep], [read.raw[i] for i in keep], [read.names[i] for i in keep],
                 read.source, [read.where[i] for i in keep], read.class_names, read.class_dirs)
    for label, folder in read.class_dirs.items():
        if label not in kept.raw:
            raise UserError(f"Every image in class folder {folder} is bad (see the warnings above), so class "
                            f"`{label}` has no examples left. Replace the files or remove the folder.")
    return kept, [f"{split}: skipped {len(bad)} bad image file(s) (data.skip_bad_images): "
                  + "; ".join(lines[:MAX_LISTED]) + (" ..." if len(lines) > MAX_LISTED else "")]
