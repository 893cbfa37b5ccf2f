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
from textxfer.core.heap import release_unused_memory
from textxfer.data.hub import hub_table, load_hub
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
    note_leaks,
    strata,
    stratified_indices,
)
from textxfer.data.stored import STORE_ABOVE_ROWS, StoredRows, open_stored, store_hub

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
    rows = {n: _read_rows(sources[n], cfg, n, notes, declared) for n in given}
    keys = {n: normalise_labels(r, cfg, declared, notes) for n, r in rows.items() if isinstance(r, SplitRows)}
    # a stored split's label keys are few: its distinct values stand for its rows in the label order
    seen = {n: keys[n] if n in keys else [[k] for k in rows[n].first_where] for n in given}
    space = build_label_space(cfg, seen["train"], _class_names(rows["train"], cfg), list(seen.values()), notes)
    ids = {n: encode_labels(keys[n], rows[n], space, n) if n in keys else rows[n].label_ids(space, n)
           for n in given}
    names, multi = space.names, cfg.multi_label
    freq = label_freq(ids["train"], len(names))
    info = {n: {"source": _source(r), "rows_read": r.rows_read, "skipped_rows": len(r.skipped),
                "label_counts_read": _counts(ids[n], names)} for n, r in rows.items()}
    for n in given[1:]:
        _check_seen(n, ids[n], rows[n], freq, names)
    data = {n: EncodedSplit(rows[n].texts, rows[n].pairs, ids[n]) if n in keys else
            EncodedSplit(None, None, ids[n], rows[n], np.arange(len(rows[n]))) for n in given}

    if cfg.dedupe:
        data["train"] = dedupe_train(data["train"], notes)
    for split, share, salt in (("test", cfg.test_split, 1), ("validation", cfg.validation_split, 2)):
        if split in data or share <= 0:
            continue
        train = data["train"]
        fraction = share / (1 - (cfg.test_split if split == "validation" and "test" not in given else 0))
        keep, carved = stratified_indices(strata(train.ids, multi, freq), fraction, seed + salt)
        if not len(carved):
            raise UserError(f"`data.{split}_split` {share} of {len(train)} training rows carves no example; "
                            f"raise it or give a {split} file (`data.{split}`).")
        data[split], data["train"] = train.take(carved), train.take(keep)
        info[split] = {"source": "carved from train", "rows_read": 0, "skipped_rows": 0, "label_counts_read": {}}
        note(notes, f"{split}: {len(carved):,} examples carved from train (stratified, seed {seed + salt}); "
                     f"{len(keep):,} left to train on.")
    if cfg.dedupe:
        drop_leaks(data, given, notes)
    else:
        note_leaks(data, given, notes)
    data["train"] = few_shot_subset(data["train"], cfg, seed, names, multi, freq, notes)
    counts = label_freq(data["train"].ids, len(names))
    present = counts > 0
    missing = [names[j] for j in range(len(names)) if not present[j]]
    if missing:
        subset = cfg.examples_per_class is not None or cfg.max_train_examples is not None
        note(notes, f"train has no example of {len(missing)} label(s){' after subsetting' if subset else ''}: "
                     f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.")
    if "validation" in data:
        unseen = [names[j] for j, c in enumerate(label_freq(data["validation"].ids, len(names))) if present[j] and not c]
        if unseen:
            note(notes, f"validation has no example of {len(unseen)} label(s) that train has: "
                         f"{', '.join(unseen[:10])}{' ...' if len(unseen) > 10 else ''}. The best epoch is picked "
                         "without them: add validation examples of them, or carve validation from train instead "
                         "(`data.validation_split`, stratified).")
    single = [names[j] for j in range(len(names)) if counts[j] == 1]
    if single and cfg.examples_per_class is None:  # a per-class draw of one is the user's choice
        note(notes, f"train has a single example of {len(single)} label(s): {', '.join(map(repr, single[:10]))}"
                     f"{' ...' if len(single) > 10 else ''}. One example teaches little and is often a typo in the "
                     "label: check it, add examples, or merge it with a `data.labels` mapping.")
    sets = {n: _dataset(s, len(names), multi) for n, s in data.items()}
    if any(isinstance(r, StoredRows) for r in rows.values()):
        release_unused_memory()  # reading, hashing and carving a large split freed much; the heap keeps it
    return Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                  multi_label=multi, sources={n: _source(rows[n]) for n in given}, notes=notes, info=info,
                  in_memory={n: m.record() for n, m in memory.items() if n in given})


def _read_rows(value: Any, cfg: DataConfig, split: str, notes: list[str], declared: set[str]) -> SplitRows | StoredRows:
    """A large file (or Hub split) read in chunks into a memory-mapped store; any other read whole."""
    if isinstance(value, str) and value.startswith("hub:"):
        ds, source = load_hub(value.removeprefix("hub:"), cfg, split)
        if len(ds) > STORE_ABOVE_ROWS and not cfg.multi_label:
            return store_hub(ds, source, cfg, notes, declared)
        return usable_rows(hub_table(ds, source, cfg), cfg, notes, declared)
    stored = open_stored(value, cfg, split, notes, declared)
    if stored is not None:
        return stored
    return usable_rows(read_table(value, cfg, split, notes), cfg, notes, declared)


def _source(rows: SplitRows | StoredRows) -> str:
    return rows.source if isinstance(rows, StoredRows) else rows.table.source


def _class_names(rows: SplitRows | StoredRows, cfg: DataConfig) -> list[str] | None:
    """The names of a Hub dataset's ClassLabel label column, if it is one."""
    if isinstance(rows, StoredRows):
        return rows.class_names
    table = rows.table
    label_col = table.names[cfg.label_column] \
        if isinstance(cfg.label_column, int) and table.header and cfg.label_column < len(table.names) \
        else cfg.label_column
    return table.class_names.get(label_col)


def _counts(ids: list[list[int]] | np.ndarray, names: list[str]) -> dict[str, int]:
    c = label_freq(ids, len(names))
    return {n: int(c[i]) for i, n in enumerate(names)}


def _check_seen(split: str, ids: list[list[int]] | np.ndarray, rows: SplitRows | StoredRows, freq: np.ndarray,
                names: list[str]) -> None:
    """Classes in validation/test with no training example: the model cannot learn them, so say so."""
    unseen: dict[int, tuple[int, int]] = {}  # class -> (rows, first row)
    if isinstance(ids, np.ndarray):
        for j in np.unique(ids[freq[ids] == 0]).tolist():
            at = np.flatnonzero(ids == j)
            unseen[j] = (len(at), int(at[0]))
    else:
        for i, row in enumerate(ids):
            for j in row:
                if freq[j] == 0:
                    n, first = unseen.get(j, (0, i))
                    unseen[j] = (n + 1, first)
    if unseen:
        listed = "; ".join(f"{names[j]!r} ({n} row(s), first at {rows.where(first)})"
                           for j, (n, first) in list(unseen.items())[:10])
        raise UserError(f"The {split} data has classes that never occur in train: {listed}. Add training examples "
                        f"of them, drop those {split} rows, or merge the classes with a `data.labels` mapping.")


def _dataset(split: EncodedSplit, num_labels: int, multi: bool):
    """Columns built as Arrow arrays: `from_dict(..., features=...)` would encode every row in Python."""
    import pyarrow as pa
    from datasets import Dataset

    if split.store is not None:
        return _stored_dataset(split)
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


def _stored_dataset(split: EncodedSplit):
    """The split's rows of its memory-mapped store with their class ids: the store's file stays the data (an
    index selects the rows), with one in-memory column of ids."""
    ds = split.store.dataset
    labels = np.full(len(ds), -1, dtype=np.int64)
    labels[split.index] = split.ids
    cols = ["text", "text_pair"] if "text_pair" in ds.column_names else ["text"]
    out = ds.select_columns(cols).add_column("label", labels)
    if len(split.index) == len(ds) and bool((split.index == np.arange(len(ds))).all()):
        return out
    return out.select(split.index)
