"""The image splits a run trains on: read every split the recipe gives, check its files, map raw labels to class
ids, and carve or subsample what the recipe asks for (validation/test shares, examples per class, a cap on
training images)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.labels import label_sort_key
from textxfer.data.notes import note
from textxfer.modalities.image.files import (
    ImageListing,
    ImageSplit,
    check_image_files,
    is_excluded,
    read_images,
)

if TYPE_CHECKING:
    from textxfer.data.splits import Splits

SPLITS = ("train", "validation", "test")
TEXT_ONLY = ("text_pair_column", "label_pattern", "label_level", "dedupe", "label_separator")


def _label_names(cfg: DataConfig, train: ImageListing) -> tuple[list[str], dict[str, str]]:
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
    names = sorted(set(train.raw), key=label_sort_key)
    return names, {n: n for n in names}


def _encode(read: ImageListing, mapping: dict[str, str], names: list[str], split: str,
            train: ImageListing) -> np.ndarray:
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


def load_image_splits(cfg: DataConfig, seed: int) -> tuple[Splits, dict[str, ImageSplit]]:
    """Read the splits as the recipe says, check every file, fix the labels, carve missing splits."""
    from datasets import Dataset

    from textxfer.data.sampling import per_class_subset, stratified_split, subset_stratified
    from textxfer.data.splits import Splits

    if cfg.multi_label:
        raise UserError("Multi-label image classification is not supported yet: set `data.multi_label: false`.")
    defaults = DataConfig()
    text_only = [k for k in TEXT_ONLY if getattr(cfg, k, None) != getattr(defaults, k, None)]
    if text_only:  # refused rather than silently ignored
        raise UserError(f"{', '.join(f'`data.{k}`' for k in text_only)} apply to text data only; remove them from "
                        "this image recipe.")
    hits: set[str] = set()
    given = [n for n in SPLITS if getattr(cfg, n) is not None]
    read = {n: read_images(getattr(cfg, n), cfg, n, hits) for n in given}
    notes, skipped_counts = [], {}
    for n in given:
        rows = len(read[n].items)
        read[n], skipped = check_image_files(read[n], cfg, n)
        skipped_counts[n] = rows - len(read[n].items)
        for line in skipped:
            note(notes, line)
    for p in cfg.exclude_images or []:
        matched = [h for h in hits if is_excluded(h, [p])]
        note(notes, f"data.exclude_images `{p}`: left out {len(matched)} file(s)"
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
        note(notes, f"{split}: {len(carved):,} images carved from train (stratified, seed {seed + salt}); "
                    f"{len(keep):,} left to train on.")
    train = data["train"]
    if cfg.examples_per_class is not None:
        idx = per_class_subset([int(y) for y in train.targets], cfg.examples_per_class, seed + 3, names,
                               unit="training images")
        train = train.take(idx)
        note(notes, f"train: {cfg.examples_per_class} images per class, {len(idx)} in all "
                    f"(drawn with training.seed {seed}).")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        train = train.take(subset_stratified(train.targets.tolist(), cfg.max_train_examples, seed + 4))
        note(notes, f"train: limited to {len(train)} images (data.max_train_examples, stratified).")
    data["train"] = train
    missing = [names[j] for j in range(len(names)) if not np.any(train.targets == j)]
    if missing and not read["train"].class_names:
        note(notes, f"train has no image of {len(missing)} label(s): {', '.join(missing[:10])}.")
    sets = {n: Dataset.from_dict({"image": d.names, "label": d.targets.tolist()}) for n, d in data.items()}
    splits = Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                    multi_label=False, sources={n: r.source for n, r in read.items()}, notes=notes)
    if hasattr(splits, "info"):
        splits.info = info
    return splits, {n: data[n] for n in SPLITS if n in data}


def fingerprint(split: ImageSplit) -> str:
    """A short hash of a split's images and labels, for the run's record of its data."""
    return split.content_hash()[:16]
