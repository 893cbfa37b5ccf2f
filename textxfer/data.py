"""Data: turn the files a user has into (text, label) examples with a fixed label order, and split them.

Output is a `Splits` of `datasets.Dataset`s with a `text` column (and `text_pair` for pair tasks) and
`label` (class id) or, for multi-label data, `labels` (a multi-hot float list).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textxfer.errors import UserError
from textxfer.recipe import DataConfig

SPLITS = ("train", "validation", "test")


@dataclass
class Splits:
    train: Any
    validation: Any | None
    test: Any | None
    labels: list[str]
    multi_label: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def items(self):
        return [(n, getattr(self, n)) for n in SPLITS if getattr(self, n) is not None]


def fingerprint(ds) -> str:
    """A stable hash of a split's texts and labels (for caches and for the run record)."""
    h = hashlib.sha256()
    for col in ("text", "text_pair", "label", "labels"):
        if col in ds.column_names:
            h.update(json.dumps(list(ds[col]), ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _resolve_path(value: str) -> Path:
    if value.startswith("package:"):
        from textxfer.backbones import resolve_package_path

        return resolve_package_path(value)
    return Path(value).expanduser()


def _read_frame(path: Path, cfg: DataConfig):
    """Read one delimited/JSON/Parquet file into a pandas DataFrame of strings (labels kept as read)."""
    import pandas as pd

    suffix = path.suffix.lower().lstrip(".")
    fmt = cfg.format if cfg.format != "auto" else {"txt": "text", "jsonl": "jsonl", "ndjson": "jsonl"}.get(
        suffix, suffix)
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist. Check the path in the recipe (`data.*`).")
    if path.stat().st_size == 0:
        raise UserError(f"Data file {path} is empty. Point the recipe at a file with examples.")
    try:
        if fmt in ("csv", "tsv"):
            sep = cfg.delimiter or ("\t" if fmt == "tsv" else ",")
            header = "infer" if cfg.header in (None, True) else None
            frame = pd.read_csv(path, sep=sep, header=0 if header == "infer" else None, dtype=str,
                                keep_default_na=False, encoding=cfg.encoding, quoting=3 if sep == "\t" else 0)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif fmt == "json":
            frame = pd.read_json(path, dtype=False)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            raise UserError(
                f"Data file {path}: unknown format `{suffix}`. Use csv, tsv, json, jsonl or parquet, or set "
                "`data.format`."
            )
    except UserError:
        raise
    except Exception as e:  # pandas raises many types; name the file and the cause
        raise UserError(f"Could not read data file {path} as {fmt}: {e}. Check `data.format`/`data.delimiter`.") \
            from None
    if len(frame) == 0:
        raise UserError(f"Data file {path} has a header but no rows. Add examples to it.")
    return frame


def _column(frame, col, path: Path, what: str):
    if isinstance(col, int) and col not in frame.columns:
        if col >= len(frame.columns):
            raise UserError(f"{path}: `data.{what}` is column {col}, but the file has {len(frame.columns)} columns.")
        return frame.iloc[:, col]
    if col not in frame.columns:
        raise UserError(
            f"{path} has no column `{col}` (recipe key `data.{what}`). Columns that exist: "
            f"{', '.join(map(str, frame.columns))}. Set `data.{what}` to one of them."
        )
    return frame[col]


def _read_split(value: Any, cfg: DataConfig) -> tuple[list[str], list[str] | None, list[Any], str]:
    """Read (texts, pair texts, raw labels, source description) for one split value of the recipe."""
    if isinstance(value, dict):  # {label: file or folder of .txt}
        texts, raw = [], []
        for label, where in value.items():
            t = _read_class_source(_resolve_path(str(where)))
            texts += t
            raw += [str(label)] * len(t)
        return texts, None, raw, "per-class files"
    path = _resolve_path(str(value))
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"Data folder {path} has no class folders (expected {path}/<label>/*.txt).")
        texts, raw = [], []
        for c in classes:
            t = _read_class_source(c)
            texts += t
            raw += [c.name] * len(t)
        return texts, None, raw, str(path)
    frame = _read_frame(path, cfg)
    texts = _column(frame, cfg.text_column, path, "text_column")
    pairs = _column(frame, cfg.text_pair_column, path, "text_pair_column") if cfg.text_pair_column is not None \
        else None
    labels = _column(frame, cfg.label_column, path, "label_column")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or t.strip() == "":
            raise UserError(f"{path}, row {i + 1}: the text (column `{cfg.text_column}`) is empty or missing.")
    return list(texts), list(pairs) if pairs is not None else None, list(labels), str(path)


def _read_class_source(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UserError(f"Class folder {path} holds no .txt files. Add examples or remove the folder.")
        return [_read_text(f).strip() for f in files]
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist. Check the path in the recipe.")
    lines = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not lines:
        raise UserError(f"Data file {path} is empty. Put one example per line in it.")
    return lines


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _label_names(raw_train: list[Any], cfg: DataConfig) -> tuple[list[str], dict[str, str]]:
    """The label order and the raw-value -> name map."""
    if isinstance(cfg.labels, dict):
        mapping = {str(k): str(v) for k, v in cfg.labels.items()}
        names = list(dict.fromkeys(mapping.values()))
        return names, mapping
    if isinstance(cfg.labels, list):
        names = [str(x) for x in cfg.labels]
        return names, {n: n for n in names}
    values = sorted({str(x) for x in raw_train}, key=lambda s: (not s.lstrip("-").isdigit(),
                                                                int(s) if s.lstrip("-").isdigit() else 0, s))
    return values, {v: v for v in values}


def _encode_labels(raw: list[Any], mapping: dict[str, str], names: list[str], source: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for row, value in enumerate(raw):
        key = str(value)
        if key not in mapping or mapping[key] not in index:
            raise UserError(
                f"{source}, row {row + 1}: label {value!r} is not one of the known labels ({', '.join(names[:20])}"
                f"{'...' if len(names) > 20 else ''}). Fix the row or add the label to `data.labels`."
            )
        out.append(index[mapping[key]])
    return out


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, carved) with `fraction` of each class carved out (at least one where possible)."""
    rng = np.random.default_rng(seed)
    keep, carved = [], []
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for _y, idx in sorted(by_class.items()):
        idx = list(rng.permutation(idx))
        n = int(round(len(idx) * fraction))
        if n == 0 and len(idx) > 1 and fraction > 0:
            n = 1
        carved += idx[:n]
        keep += idx[n:]
    return sorted(keep), sorted(carved)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Read train/validation/test as the recipe says, fix the labels, carve missing splits (stratified)."""
    from datasets import Dataset

    read = {name: _read_split(getattr(cfg, name), cfg) for name in SPLITS if getattr(cfg, name) is not None}
    names, mapping = _label_names(read["train"][2], cfg)
    columns: dict[str, dict[str, list]] = {}
    for name, (texts, pairs, raw, source) in read.items():
        cols = {"text": [str(t) for t in texts], "label": _encode_labels(raw, mapping, names, source)}
        if pairs is not None:
            cols["text_pair"] = [str(t) for t in pairs]
        columns[name] = cols
    notes = []
    for name, fraction in (("test", cfg.test_split), ("validation", cfg.validation_split)):
        if name in columns or fraction <= 0:
            continue
        train = columns["train"]
        keep, carved = stratified_split(train["label"], fraction, seed)
        columns[name] = {k: [v[i] for i in carved] for k, v in train.items()}
        columns["train"] = {k: [v[i] for i in keep] for k, v in train.items()}
        notes.append(f"{name}: {len(carved)} examples carved from train (stratified, seed {seed})")
    train = columns["train"]
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train["label"]):
        frac = 1 - cfg.max_train_examples / len(train["label"])
        keep, _ = stratified_split(train["label"], frac, seed)
        keep = keep[: cfg.max_train_examples]
        columns["train"] = {k: [v[i] for i in keep] for k, v in train.items()}
        notes.append(f"train: limited to {len(keep)} examples (stratified, seed {seed})")
    sets = {n: Dataset.from_dict(c) for n, c in columns.items()}
    return Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                  multi_label=False, sources={n: r[3] for n, r in read.items()}, notes=notes)
