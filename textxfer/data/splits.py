"""Data: turn the files a user has into (text, label) examples with a fixed label order, and split them.

The flow, in the order `load_splits` runs it:
  read    one recipe value (file, folder, {label: file}, `hub:<id>`) -> a `Table` of columns as read (tables.py,
          text_files.py, hub.py, memory.py)
  rows    pick the text / pair / label columns; rows with a missing text or label stop the run (or are skipped)
          (rows.py)
  labels  fix the label order (`data.labels`, a Hub dataset's names, or the sorted train values) and map every
          raw value to an id; values that do not fit are errors that name the file and row (labels.py)
  splits  de-duplicate, carve missing validation/test (stratified, seeded), few-shot subsets of train
          (sampling.py)
Output: a `Splits` of `datasets.Dataset`s with `text` (and `text_pair` for pair tasks) and `label` (class id) or,
for multi-label data, `labels` (a multi-hot float32 list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.labels import build_label_space, declared_labels, encode_labels, normalise_labels
from textxfer.data.memory import InMemory
from textxfer.data.notes import note
from textxfer.data.rows import SplitRows, read_table, usable_rows
from textxfer.data.sampling import (
    EncodedSplit,
    dedupe_train,
    drop_leaks,
    few_shot_subset,
    label_freq,
    strata,
    stratified_split,
)

SPLITS = ("train", "validation", "test")


@dataclass
class Splits:
    """What `load_splits` gives: the prepared `datasets.Dataset`s, the label order, and what the user should
    know about how they were read."""

    train: Any
    validation: Any | None
    test: Any | None
    labels: list[str]
    multi_label: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    info: dict[str, dict] = field(default_factory=dict)
    """Per split: `source`, `rows_read` (rows in the source before skipping, dedupe and carving), `skipped_rows`,
    `label_counts_read` ({label: rows} as read). Carved splits have source "carved from train"."""
    in_memory: dict[str, dict] = field(default_factory=dict)
    """Per split given from Python (`textxfer.train(train=df)`): its type, rows, columns and content fingerprint
    (`InMemory.record`), for the run record."""

    def items(self) -> list[tuple[str, Any]]:
        return [(n, getattr(self, n)) for n in SPLITS if getattr(self, n) is not None]


def _check_config(cfg: DataConfig, memory: dict[str, InMemory]) -> None:
    if cfg.train is None and "train" not in memory:
        raise UserError("Recipe key `data.train` is missing: give the training data.")
    for key in ("max_train_examples", "examples_per_class"):
        v = getattr(cfg, key)
        if v is not None and v < 1:
            raise UserError(f"`data.{key}` must be at least 1 (or null for all), not {v}.")
    carve = {n: getattr(cfg, n) is None and n not in memory for n in ("validation", "test")}
    if (cfg.validation_split if carve["validation"] else 0) + (cfg.test_split if carve["test"] else 0) >= 1:
        raise UserError(f"`data.validation_split` ({cfg.validation_split}) + `data.test_split` ({cfg.test_split}) "
                        "leave nothing to train on; keep their sum below 1.")


def read_split(value: Any, cfg: DataConfig) -> tuple[list[str], list[str] | None, list[Any], str]:
    """Read (texts, pair texts, raw labels, source description) for one split value of the recipe.

    Raw labels are the label values as keys (strings; lists of strings when `cfg.multi_label`), after
    `data.label_level`/`label_pattern`. Used by `textxfer evaluate` on a user's file."""
    notes: list[str] = []
    declared = declared_labels(cfg)
    rows = usable_rows(read_table(value, cfg, "train", notes), cfg, notes, declared)
    keys = normalise_labels(rows, cfg, declared, notes)
    raw = keys if cfg.multi_label else [k[0] for k in keys]
    return rows.texts, rows.pairs, raw, rows.table.source


def load_splits(cfg: DataConfig, seed: int, memory: dict[str, InMemory] | None = None) -> Splits:
    """Read train/validation/test as the recipe says, fix the labels, de-duplicate, carve missing splits
    (stratified, seeded) and take few-shot subsets of train.

    `memory`: splits given from Python (`in_memory`), read in place of the recipe's `data.<split>`."""
    memory = memory or {}
    _check_config(cfg, memory)
    notes: list[str] = []
    declared = declared_labels(cfg)
    sources = {n: memory.get(n, getattr(cfg, n)) for n in SPLITS}
    given = [n for n in SPLITS if sources[n] is not None]
    rows = {n: usable_rows(read_table(sources[n], cfg, n, notes), cfg, notes, declared) for n in given}
    keys = {n: normalise_labels(r, cfg, declared, notes) for n, r in rows.items()}
    train_table = rows["train"].table
    label_col = train_table.names[cfg.label_column] \
        if isinstance(cfg.label_column, int) and train_table.header and cfg.label_column < len(train_table.names) \
        else cfg.label_column
    class_names = train_table.class_names.get(label_col)
    space = build_label_space(cfg, keys["train"], class_names, list(keys.values()))
    ids = {n: encode_labels(keys[n], rows[n], space, n) for n in given}
    names, multi = space.names, cfg.multi_label
    freq = label_freq(ids["train"], len(names))
    info = {n: {"source": r.table.source, "rows_read": r.rows_read, "skipped_rows": len(r.skipped),
                "label_counts_read": _counts(ids[n], names)} for n, r in rows.items()}
    for n in given[1:]:
        _check_seen(n, ids[n], rows[n], freq, names)
    data = {n: EncodedSplit(rows[n].texts, rows[n].pairs, ids[n]) for n in given}

    if cfg.dedupe:
        data["train"] = dedupe_train(data["train"], notes)
    for split, share, salt in (("test", cfg.test_split, 1), ("validation", cfg.validation_split, 2)):
        if split in data or share <= 0:
            continue
        train = data["train"]
        fraction = share / (1 - (cfg.test_split if split == "validation" and "test" not in given else 0))
        keep, carved = stratified_split(strata(train.ids, multi, freq), fraction, seed + salt)
        if not carved:
            raise UserError(f"`data.{split}_split` {share} of {len(train.texts)} training rows carves no example; "
                            f"raise it or give a {split} file (`data.{split}`).")
        data[split], data["train"] = train.take(carved), train.take(keep)
        info[split] = {"source": "carved from train", "rows_read": 0, "skipped_rows": 0, "label_counts_read": {}}
        note(notes, f"{split}: {len(carved):,} examples carved from train (stratified, seed {seed + salt}); "
                     f"{len(keep):,} left to train on.")
    if cfg.dedupe:
        drop_leaks(data, given, notes)
    data["train"] = few_shot_subset(data["train"], cfg, seed, names, multi, freq, notes)
    missing = [names[j] for j in range(len(names)) if not any(j in row for row in data["train"].ids)]
    if missing:
        note(notes, f"train has no example of {len(missing)} label(s) after subsetting: "
                     f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.")
    sets = {n: _dataset(s, len(names), multi) for n, s in data.items()}
    return Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                  multi_label=multi, sources={n: rows[n].table.source for n in given}, notes=notes, info=info,
                  in_memory={n: m.record() for n, m in memory.items() if n in given})


def _counts(ids: list[list[int]], names: list[str]) -> dict[str, int]:
    c = label_freq(ids, len(names))
    return {n: int(c[i]) for i, n in enumerate(names)}


def _check_seen(split: str, ids: list[list[int]], rows: SplitRows, freq: np.ndarray, names: list[str]) -> None:
    """Classes in validation/test with no training example: the model cannot learn them, so say so."""
    unseen: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        for j in row:
            if freq[j] == 0:
                unseen.setdefault(j, []).append(i)
    if unseen:
        listed = "; ".join(f"{names[j]!r} ({len(r)} row(s), first at {rows.where(r[0])})"
                           for j, r in list(unseen.items())[:10])
        raise UserError(f"The {split} data has classes that never occur in train: {listed}. Add training examples "
                        f"of them, drop those {split} rows, or merge the classes with a `data.labels` mapping.")


def _dataset(split: EncodedSplit, num_labels: int, multi: bool):
    """Columns built as Arrow arrays: `from_dict(..., features=...)` would encode every row in Python."""
    import pyarrow as pa
    from datasets import Dataset

    cols: dict[str, Any] = {"text": pa.array(split.texts, pa.string())}
    if split.pairs is not None:
        cols["text_pair"] = pa.array(split.pairs, pa.string())
    if multi:
        hot = np.zeros((len(split.ids), num_labels), dtype=np.float32)
        rows = np.repeat(np.arange(len(split.ids)), [len(r) for r in split.ids])
        hot[rows, [j for r in split.ids for j in r]] = 1.0
        offsets = np.arange(0, hot.size + 1, num_labels, dtype=np.int32)
        cols["labels"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(hot.ravel()))
    else:
        cols["label"] = pa.array([row[0] for row in split.ids], pa.int64())
    return Dataset.from_dict(cols)
