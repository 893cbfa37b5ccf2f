"""Data: turn the files a user has into (text, label) examples with a fixed label order, and split them.

The flow, in the order the code reads:
  read    one recipe value (file, folder, {label: file}, `hub:<id>`) -> a `Table` of columns as read
  rows    pick the text / pair / label columns; rows with a missing text or label stop the run (or are skipped)
  labels  fix the label order (`data.labels`, a Hub dataset's names, or the sorted train values) and map every
          raw value to an id; values that do not fit are errors that name the file and row
  splits  de-duplicate, carve missing validation/test (stratified, seeded), few-shot subsets of train
Output: a `Splits` of `datasets.Dataset`s with `text` (and `text_pair` for pair tasks) and `label` (class id) or,
for multi-label data, `labels` (a multi-hot float32 list).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textxfer.errors import UserError
from textxfer.recipe import DataConfig

SPLITS = ("train", "validation", "test")
SUFFIX_FORMATS = {"csv": "csv", "tsv": "tsv", "tab": "tsv", "json": "json", "jsonl": "jsonl", "ndjson": "jsonl",
                  "parquet": "parquet", "pq": "parquet", "txt": "text"}
# label cells that mean "no label" unless `data.labels` names them as real classes
MISSING_LABELS = {"nan", "NaN", "NAN", "None", "null", "NULL"}
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")
_INDEX_LIST = re.compile(r"^\s*\d+(\s*[,;|]\s*\d+)+\s*$")
_TREC_PREFIX = re.compile(r"^\S+:\S+\s")

log = logging.getLogger("textxfer")


@dataclass
class Splits:
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

    def items(self):
        return [(n, getattr(self, n)) for n in SPLITS if getattr(self, n) is not None]


def column(ds, name: str) -> list:
    """A column as a Python list, fast: `list(ds[name])` walks datasets 5's lazy Column row by row (2.5 s for
    SST-2's 67k texts); slicing it converts the Arrow column in one go (15 ms)."""
    return ds[name][:]


def fingerprint(ds) -> str:
    """A stable hash of a split's texts (or image paths) and labels (for caches and for the run record)."""
    h = hashlib.sha256()
    for col in ("text", "text_pair", "image", "label", "labels"):
        if col in ds.column_names:
            h.update(json.dumps(column(ds, col), ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _note(notes: list[str], message: str) -> None:
    """A fact the user should see: kept in `Splits.notes` (printed by `data check`, logged by `train`)."""
    notes.append(message)
    log.warning(message)


# ------------------------------------------------------------------------------------------------- read

@dataclass
class Table:
    """One source as read: columns by key (names, or 0-based numbers without a header) and where rows came from."""

    columns: dict[Any, list]
    source: str
    names: list[Any] = field(default_factory=list)
    unit: str = "row"  # "row": data row, header not counted; "line": line of the file; "file": one file each
    rows: list[int] | None = None  # per-row number in `unit`; None: 1..n
    files: list[str] | None = None  # per-row file when one split is read from several files
    class_names: dict[Any, list[str]] = field(default_factory=dict)  # ClassLabel names of a Hub dataset
    fixed: bool = False  # columns are always `text`/`label` (prefix lines, per-class files)
    header: bool = True
    index: Any = None  # per-row label shown after the row number (a DataFrame's index); None: none
    hint: str = ""  # said after a missing-column error: e.g. the file was read with another delimiter than it uses

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, i: int) -> str:
        f = self.files[i] if self.files else self.source
        if self.unit == "file":
            return f
        where = f"{f}, {self.unit} {self.rows[i] if self.rows else i + 1}"
        return where if self.index is None else f"{where} (index {self.index[i]})"


def _resolve_path(value: str) -> Path:
    if value.startswith("package:"):
        from textxfer.backbones import resolve_package_path

        return resolve_package_path(value)
    return Path(value).expanduser()


def read_table(value: Any, cfg: DataConfig, split: str, notes: list[str]) -> Table:
    """Dispatch one recipe value (`data.train` etc.) to its reader."""
    if isinstance(value, InMemory):
        return value.table
    if isinstance(value, str) and value.startswith(IN_MEMORY_PREFIX):
        raise UserError(f"`data.{split}` was given from Python ({value}), so there is no file to read. Pass the data "
                        f"again (`textxfer.train(recipe, {split}=...)`, with `resume=True` to continue that run), or "
                        f"point `data.{split}` at a file.")
    if isinstance(value, dict):
        return _read_per_class({str(k): v for k, v in value.items()}, cfg, notes)
    if not isinstance(value, str):
        raise UserError(f"`data.{split}` is {value!r}: give a file, a folder, `hub:<dataset id>`, or "
                        "{label: file} for one file per class.")
    if value.startswith("hub:"):
        return _read_hub(value.removeprefix("hub:"), cfg, split)
    path = _resolve_path(value)
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"Data folder {path} has no class folders (expected {path}/<label>/*.txt). Point "
                            f"`data.{split}` at a file, or put one folder per class in it.")
        return _read_per_class({c.name: c for c in classes}, cfg, notes, source=str(path))
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist (recipe key `data.{split}`). Check the path; recipes "
                        "for the shared datasets read them under ${TEXTXFER_DATA}.")
    fmt = _format_of(path, cfg)
    if fmt == "parquet":
        return _read_parquet(path)
    content = _decode(path, cfg, notes)
    if not content.strip():
        raise UserError(f"Data file {path} is empty. Point `data.{split}` at a file with examples.")
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, content, cfg, fmt, notes)
    if fmt in ("json", "jsonl"):
        return _read_json(path, content, fmt == "jsonl")
    return _read_prefix(path, content, cfg, fmt, notes)


def _format_of(path: Path, cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in SUFFIX_FORMATS:
        raise UserError(
            f"Data file {path}: unknown format (extension `{path.suffix or 'none'}`). Set `data.format` to csv, tsv, "
            "json, jsonl, parquet, prefix (a label, then the text, on each line) or text, or convert the file "
            "(spreadsheets: save as CSV)."
        )
    return SUFFIX_FORMATS[suffix]


def _decode(path: Path, cfg: DataConfig, notes: list[str]) -> str:
    """The file's text: UTF-8 (BOM tolerated) with a reported Latin-1 fallback, or the recipe's encoding."""
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"Data file {path} is binary, not text (format {cfg.format}). Export it as CSV/TSV/JSON "
                        "Lines, or set `data.format: parquet` if it is a Parquet file.")
    try:
        codec = codecs.lookup(cfg.encoding).name
    except LookupError:
        raise UserError(f"`data.encoding` is {cfg.encoding!r}, which Python does not know. Use e.g. utf-8, "
                        "latin-1, cp1252 or utf-16.") from None
    if codec == "utf-8":
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            _note(notes, f"{path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); read it as "
                         "Latin-1. Set `data.encoding: latin-1` to say so, or re-save the file as UTF-8.")
            return raw.decode("latin-1")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not valid {cfg.encoding}. Set "
                        "`data.encoding` to the file's real encoding (utf-8, latin-1, cp1252...).") from None


def _separator(value: str | None) -> str | None:
    """Recipe spellings of a separator: `\\t`/`tab` is a tab, `space` a space."""
    if value is None:
        return None
    return {"\\t": "\t", "tab": "\t", "space": " "}.get(value, value)


def _sniff_delimiter(content: str, path: Path, notes: list[str]) -> str:
    """`,` unless every sampled line has the same (non-zero) count of exactly one other candidate."""
    sample = [line for line in content.splitlines()[:50] if line.strip()]
    consistent = [d for d in (",", "\t", ";", "|")
                  if len({line.count(d) for line in sample}) == 1 and sample[0].count(d) > 0]
    if "," in consistent or len(consistent) != 1:
        return ","
    _note(notes, f"{path}: delimiter sniffed as {consistent[0]!r} (set `data.delimiter` to be explicit).")
    return consistent[0]


def _read_delimited(path: Path, content: str, cfg: DataConfig, fmt: str, notes: list[str]) -> Table:
    import csv
    import io

    import pandas as pd

    sep = _separator(cfg.delimiter) or ("\t" if fmt == "tsv" else _sniff_delimiter(content, path, notes))
    quoting = cfg.quoting if cfg.quoting != "auto" else ("none" if sep == "\t" else "quotes")
    try:
        frame = pd.read_csv(io.StringIO(content), sep=sep, header=None, dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
                            engine="c" if len(sep) == 1 else "python", skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"Data file {path} is empty. Point the recipe at a file with examples.") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise UserError(
            f"{path} could not be read as {fmt} with delimiter {sep!r} and quoting `{quoting}`: "
            f"{str(e).strip().splitlines()[-1]}. Check `data.delimiter` and `data.quoting` (a field that contains "
            "the delimiter must be quoted; `quoting: none` when quote marks are part of the text)."
        ) from None
    cells = [frame[c].tolist() for c in frame.columns]
    hint = _delimiter_hint(content, sep, cfg, fmt, path) if len(cells) == 1 else ""
    header = _has_header(cells, cfg, path, notes)
    if not header:
        return Table({i: col for i, col in enumerate(cells)}, str(path), names=list(range(len(cells))),
                     header=False, hint=hint)
    names: list[Any] = []
    for c in cells:
        name = str(c[0]).strip() if isinstance(c[0], str) else str(len(names))
        names.append(name if name not in names else f"{name}.{names.count(name)}")
    if len(cells[0]) < 2:
        raise UserError(f"Data file {path} has a header ({', '.join(names)}) but no rows. Add examples to it, or "
                        "set `data.header: false` if that line is an example.")
    return Table({n: c[1:] for n, c in zip(names, cells, strict=True)}, str(path), names=names, hint=hint)


_DELIMITER_NAMES = {",": "comma-separated", "\t": "tab-separated", ";": "semicolon-separated", "|": "pipe-separated"}


def _delimiter_hint(content: str, sep: str, cfg: DataConfig, fmt: str, path: Path) -> str:
    """A file that came out as one column although its lines all hold another delimiter the same number of times:
    say how it was read, what it looks like, and which recipe key to change."""
    sample = [line for line in content.splitlines()[:50] if line.strip()]
    if not sample:
        return ""
    looks = [d for d in _DELIMITER_NAMES if d != sep and sample[0].count(d) > 0
             and len({line.count(d) for line in sample}) == 1]
    if not looks:
        return ""
    found = looks[0]
    read_as = _DELIMITER_NAMES.get(sep, f"separated by {sep!r}")
    because = f"`data.delimiter: {cfg.delimiter}`" if cfg.delimiter else f"`data.format: {fmt}`"
    if found == ",":
        fix = ("set `data.format: csv`" + (" and remove `data.delimiter`" if cfg.delimiter else "")
               + " (or `auto`, which tells them apart)")
    else:
        fix = f"set `data.delimiter: {'tab' if found == chr(9) else found}`" + (
            "" if fmt == "csv" else " with `data.format: csv`")
    return (f" {path} was read as {read_as} ({because}), but its lines look {_DELIMITER_NAMES[found]}: {fix}.")


def _has_header(cells: list[list], cfg: DataConfig, path: Path, notes: list[str]) -> bool:
    """Named columns need a header row; with column numbers, the first row is a header when its label cell is
    not a value that repeats below it while the other label values do repeat (labels are few, headers unique)."""
    if cfg.header is not None:
        return cfg.header
    keys = (cfg.text_column, cfg.label_column, cfg.text_pair_column)
    if any(isinstance(k, str) and not k.isdigit() for k in keys if k is not None):
        return True
    col = int(cfg.label_column)
    if col >= len(cells) or len(cells[col]) < 3:
        return False
    first, rest = cells[col][0], cells[col][1:]
    distinct = set(rest)
    if first in distinct or len(distinct) > len(rest) // 2:
        return False
    _note(notes, f"{path}: first row taken as a header ({', '.join(str(c[0]) for c in cells)}); set "
                 "`data.header` to be explicit.")
    return True


def _read_json(path: Path, content: str, lines: bool) -> Table:
    records: list = []
    rows: list[int] = []
    if lines:
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}). Fix the line, or set "
                                "`data.format` if the file is not JSON Lines.") from None
            records.append(obj)
            rows.append(n)
    else:
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            hint = " It looks like JSON Lines: set `data.format: jsonl`." if e.msg == "Extra data" else ""
            raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).{hint}") from None
        if isinstance(data, dict):
            lists = {k: v for k, v in data.items() if isinstance(v, list)}
            if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
                if not next(iter(lists.values())):
                    raise UserError(f"Data file {path} has columns ({', '.join(lists)}) but no rows.")
                return Table(dict(data), str(path), names=list(data))
            nested = [k for k, v in lists.items() if v and all(isinstance(x, dict) for x in v)]
            if len(nested) != 1:
                raise UserError(f"{path}: a JSON object must be columns ({{\"text\": [...], \"label\": [...]}}) or "
                                "hold one list of records; write a list of records [{\"text\": ..., \"label\": ...}] "
                                "or JSON Lines instead.")
            data = data[nested[0]]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a list of records, found {type(data).__name__}.")
        records = data
        rows = list(range(1, len(data) + 1))
    if not records:
        raise UserError(f"Data file {path} holds no records. Add examples to it.")
    names: dict[str, None] = {}
    for r, n in zip(records, rows, strict=True):
        if not isinstance(r, dict):
            raise UserError(f"{path}, {'line' if lines else 'record'} {n}: expected an object like "
                            f"{{\"text\": ..., \"label\": ...}}, found {type(r).__name__} {str(r)[:60]!r}.")
        names.update(dict.fromkeys(r))
    columns = {k: [r.get(k) for r in records] for k in names}
    return Table(columns, str(path), names=list(names), unit="line" if lines else "record", rows=rows)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"Could not read {path} as Parquet: {str(e).splitlines()[0]}. Check `data.format`.") \
            from None
    if table.num_rows == 0:
        raise UserError(f"Data file {path} has columns ({', '.join(table.column_names)}) but no rows.")
    return Table(table.to_pydict(), str(path), names=list(table.column_names))


def _read_prefix(path: Path, content: str, cfg: DataConfig, fmt: str, notes: list[str]) -> Table:
    """Lines `LABEL<sep>text` (sms-spam `ham\\t...`, TREC `DESC:manner How did ...`)."""
    lines = [(n, line) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
    sep = _separator(cfg.label_separator)
    if sep is None:
        if all("\t" in line for _, line in lines):
            sep = "\t"
        elif all(_TREC_PREFIX.match(line) for _, line in lines):
            sep = " "
        elif fmt == "text":
            raise UserError(
                f"{path} is plain text, and its lines do not start with a label followed by a tab. Give one file "
                "per class (`data.train: {label: file}`), or set `data.format: prefix` and `data.label_separator` "
                "(e.g. `space` or `:`), or `data.format: csv` with `data.delimiter` for `text;label` lines."
            )
        else:
            raise UserError(f"{path}: cannot tell what ends the label on each line. Set `data.label_separator` "
                            "(`tab`, `space`, `:`...).")
        if fmt == "text":
            _note(notes, f"{path}: read as `label<{'tab' if sep == chr(9) else 'space'}>text` lines (sniffed); set "
                         "`data.format: prefix` and `data.label_separator` to be explicit.")
    labels, texts = [], []
    for _, line in lines:
        parts = line.strip().split(None, 1) if sep == " " else line.split(sep, 1)
        labels.append(parts[0].strip())
        texts.append(parts[1] if len(parts) > 1 else "")
    return Table({"label": labels, "text": texts}, str(path), names=["label", "text"], unit="line",
                 rows=[n for n, _ in lines], fixed=True)


def _read_per_class(mapping: dict[str, Any], cfg: DataConfig, notes: list[str], source: str | None = None) -> Table:
    """{label: file with one example per line, or folder with one .txt file per example}."""
    texts, labels, files, rows = [], [], [], []
    kinds = set()
    for label, where in mapping.items():
        path = where if isinstance(where, Path) else _resolve_path(str(where))
        if path.is_dir():
            found = sorted(p for p in path.glob("*.txt") if not p.name.startswith("."))
            if not found:
                raise UserError(f"Class folder {path} (label {label!r}) holds no .txt files. Add examples or "
                                "remove the folder.")
            for f in found:
                texts.append(_decode(f, cfg, notes).strip())
                labels.append(label)
                files.append(str(f))
                rows.append(0)
            kinds.add("file")
        elif path.is_file():
            lines = [(n, line) for n, line in enumerate(_decode(path, cfg, notes).splitlines(), 1)
                     if line.strip()]
            if not lines:
                raise UserError(f"Data file {path} (label {label!r}) is empty. Put one example per line in it.")
            for n, line in lines:
                texts.append(line.strip())
                labels.append(label)
                files.append(str(path))
                rows.append(n)
            kinds.add("line")
        else:
            raise UserError(f"Data file {path} (label {label!r}) does not exist. Check the path in the recipe.")
    unit = "file" if kinds == {"file"} else "line"
    src = source or "per-class files (" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + ")"
    return Table({"label": labels, "text": texts}, src, names=["label", "text"], unit=unit, rows=rows,
                 files=files, fixed=True)


def _read_hub(spec: str, cfg: DataConfig, split: str) -> Table:
    """`hub:<id>` reads the split named like the recipe key; `hub:<id>:<split>` picks one (slices allowed)."""
    repo, _, split_name = spec.partition(":")
    split_name = split_name or split
    from datasets import load_dataset

    what = f"Hub dataset `{repo}`" + (f" (config {cfg.hub_config})" if cfg.hub_config else "") + \
        f", split `{split_name}`"
    try:
        ds = load_dataset(repo, name=cfg.hub_config, split=split_name, revision=cfg.hub_revision)
    except Exception as e:  # network, missing config/split, offline mode: all mean the same to the user
        raise UserError(
            f"Could not load the {what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}. "
            "Check the id, `data.hub_config` and the split name (`hub:<id>:<split>`). Without network access, "
            "download the files elsewhere and point `data.*` at them."
        ) from None
    wanted = {k for k in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if k is not None}
    names = list(ds.column_names)
    wanted |= {names[k] for k in wanted if isinstance(k, int) and k < len(names)}
    columns = {c: ds[c][:] for c in names if c in wanted}
    if not len(ds):
        raise UserError(f"The {what} has no rows.")
    return Table(columns, f"hub:{repo}:{split_name}", names=names, class_names=_class_label_names(ds, columns))


def _class_label_names(ds, columns) -> dict[Any, list[str]]:
    """{column: names} for a Dataset's ClassLabel columns (and lists of ClassLabel, for multi-label)."""
    from datasets import ClassLabel

    out = {}
    for c in columns:
        feat = ds.features[c]
        inner = getattr(feat, "feature", None)
        if isinstance(feat, ClassLabel):
            out[c] = list(feat.names)
        elif isinstance(inner, ClassLabel):
            out[c] = list(inner.names)
    return out


# ------------------------------------------------------------------------------------------- in memory

IN_MEMORY_PREFIX = "<in-memory "
"""How the saved recipe spells a split given from Python: `<in-memory pandas.DataFrame, 120 rows, fingerprint ...>`."""


@dataclass
class InMemory:
    """A split given from Python (`textxfer.train(recipe, train=df)`) instead of a file. It becomes the same
    `Table` a file becomes after parsing, so columns, labels, bad rows, dedupe, carving and few-shot subsets all
    take the file path's code; errors name it like a file (`train DataFrame, row 3 (index 2)`)."""

    split: str
    kind: str  # "pandas.DataFrame" or "datasets.Dataset"
    table: Table
    fingerprint: str

    def describe(self) -> str:
        """What the saved recipe holds in place of a path."""
        return f"{IN_MEMORY_PREFIX}{self.kind}, {len(self.table)} rows, fingerprint {self.fingerprint}>"

    def record(self) -> dict:
        """The run record's account of the data: where it came from and a hash of its rows."""
        return {"type": self.kind, "argument": f"{self.split}=", "rows": len(self.table),
                "columns": [str(c) for c in self.table.names], "fingerprint": self.fingerprint}


def in_memory(split: str, value: Any) -> InMemory:
    """A pandas DataFrame or a `datasets.Dataset` given as `split=` -> an `InMemory` (anything else: UserError)."""
    import sys

    pd, hf = sys.modules.get("pandas"), sys.modules.get("datasets")  # a DataFrame or Dataset has imported them
    if pd is not None and isinstance(value, pd.DataFrame):
        kind, source = "pandas.DataFrame", f"{split} DataFrame"
        table = _frame_table(value, source)
    elif hf is not None and isinstance(value, hf.Dataset):
        kind, source = "datasets.Dataset", f"{split} Dataset"
        table = _hf_table(value, source)
    else:
        what = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        hint = ""
        if hf is not None and isinstance(value, hf.DatasetDict):
            hint = f" For a DatasetDict pass one split, e.g. `{split}=dd[{split!r}]`."
        elif hf is not None and isinstance(value, hf.IterableDataset):
            hint = " Materialise a streamed dataset first (`Dataset.from_generator`, or `.take(n)` then a list)."
        elif isinstance(value, (dict, list, tuple)):
            hint = " Wrap columns or records in one: `pandas.DataFrame({\"text\": [...], \"label\": [...]})`."
        elif isinstance(value, (str, Path)):
            hint = f" For a file, set the recipe's `data.{split}` to its path instead."
        raise UserError(f"`{split}=` is a {what}: give a pandas.DataFrame or a datasets.Dataset with the columns the "
                        f"recipe names (`data.text_column`, `data.label_column`).{hint}")
    if not len(table):
        raise UserError(f"The {source} has no rows ({split}=); give it examples.")
    return InMemory(split, kind, table, _content_fingerprint(table))


def _frame_table(frame, source: str) -> Table:
    """Columns as Python lists, missing values (NaN, NA, NaT) as None: what the JSON reader gives."""
    names = list(frame.columns)
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"The {source} has the column name(s) {', '.join(dupes)} more than once; rename them "
                        "(the recipe picks columns by name).")
    columns = {}
    for name in names:
        s = frame[name].astype(object)
        columns[name] = s.where(s.notna(), None).tolist()
    return Table(columns, source, names=names, index=frame.index)


def _hf_table(ds, source: str) -> Table:
    plain = ds.with_format(None)
    names = list(ds.column_names)
    columns = {c: plain[c][:] for c in names}
    return Table(columns, source, names=names, index=range(len(ds)), class_names=_class_label_names(ds, names))


def _plain(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _content_fingerprint(table: Table) -> str:
    """A stable hash of the rows as given (column names, values in order, ClassLabel names): the same rows give
    the same fingerprint in any process, whether they come as a DataFrame or a Dataset."""
    h = hashlib.sha256()
    for name in table.names:
        h.update(json.dumps([str(name), table.columns[name]], ensure_ascii=False, default=_plain).encode())
    if table.class_names:
        h.update(json.dumps({str(k): v for k, v in table.class_names.items()}, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- rows

def pick_column(table: Table, key: Any, what: str) -> list:
    """The values of one column, by name or 0-based number; a clear error listing the columns otherwise."""
    if table.fixed:
        if what == "text_pair_column":
            raise UserError(f"{table.source}: `data.text_pair_column` needs a table (CSV/TSV/JSON/Parquet); these "
                            "files have one text per line.")
        return table.columns["text" if what == "text_column" else "label"]
    if key in table.columns:
        col = key
    elif isinstance(key, str) and key.isdigit() and int(key) in table.columns:
        col = int(key)
    elif isinstance(key, int) and table.header and 0 <= key < len(table.names) and table.names[key] in table.columns:
        col = table.names[key]
    else:
        shown = ", ".join(map(str, table.names[:30])) + (" ..." if len(table.names) > 30 else "")
        if not table.header:
            hint = (f" The file has no header row, so columns are numbered 0..{len(table.names) - 1}: set "
                    f"`data.{what}` to a number, or `data.header: true` if the first line names the columns.")
        elif isinstance(key, int):
            hint = f" Set `data.{what}` to one of those names, or a number below {len(table.names)}."
        elif table.index is not None:
            hint = f" Set `data.{what}` to one of them, or rename the column."
        else:
            hint = (f" Set `data.{what}` to one of them. If the first line is an example rather than a header, set "
                    "`data.header: false` and use 0-based column numbers.")
        if table.hint:
            hint = table.hint
        raise UserError(f"{table.source} has no column `{key}` (recipe key `data.{what}`). Columns that exist: "
                        f"{shown}.{hint}")
    values = table.columns[col]
    if col in table.class_names:
        return [_class_name(v, table.class_names[col]) for v in values]
    return values


def _class_name(value: Any, names: list[str]) -> Any:
    """Hub ClassLabel ids -> names (lists for multi-label); -1 is the Hub's 'no label'."""
    if isinstance(value, list):
        return [_class_name(v, names) for v in value]
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    return value


def _missing(value: Any) -> bool:
    if type(value) is str:
        return not value.strip()
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _is_number_text(value: str) -> bool:
    v = value.strip()
    return bool(_INT.match(v) or _FLOAT.match(v))


@dataclass
class _Rows:
    """The usable rows of one split: texts, pairs, raw labels, and their index in the table (for messages)."""

    texts: list[str]
    pairs: list[str] | None
    raw: list[Any]
    index: list[int]
    table: Table
    rows_read: int
    skipped: list[str]

    def where(self, i: int) -> str:
        return self.table.where(self.index[i])


def _rows(table: Table, cfg: DataConfig, notes: list[str], declared: set[str]) -> _Rows:
    texts = pick_column(table, cfg.text_column, "text_column")
    pairs = pick_column(table, cfg.text_pair_column, "text_pair_column") if cfg.text_pair_column is not None else None
    raw = pick_column(table, cfg.label_column, "label_column")
    for values, key, what in ((texts, cfg.text_column, "text_column"), (pairs, cfg.text_pair_column,
                                                                        "text_pair_column")):
        if values is not None:
            _check_text_column(values, key, what, table)
    bad: list[tuple[int, str]] = []
    for i in range(len(texts)):
        problems = []
        if _missing(texts[i]):
            problems.append(f"text (column `{cfg.text_column}`)")
        if pairs is not None and _missing(pairs[i]):
            problems.append(f"second text (column `{cfg.text_pair_column}`)")
        label = raw[i]
        if _missing(label):
            problems.append(f"label (column `{cfg.label_column}` is empty)")
        elif isinstance(label, str) and label.strip() in MISSING_LABELS and label.strip() not in declared:
            problems.append(f"label (column `{cfg.label_column}` holds {label.strip()!r})")
        if problems:
            bad.append((i, " and ".join(problems)))
    skipped = [f"{table.where(i)}: no {what}" for i, what in bad]
    if bad and not cfg.skip_bad_rows:
        shown = "; ".join(skipped[:10]) + (f"; ... ({len(bad)} rows in all)" if len(bad) > 10 else "")
        raise UserError(f"{table.source}: {len(bad)} row(s) with a missing text or label: {shown}. Fix those rows, "
                        "or set `data.skip_bad_rows: true` to skip them with a warning.")
    keep = list(range(len(texts)))
    if bad:
        dropped = {i for i, _ in bad}
        keep = [i for i in keep if i not in dropped]
        _note(notes, f"{table.source}: skipped {len(bad)} row(s) with a missing text or label "
                     f"(data.skip_bad_rows): " + "; ".join(skipped[:10]) + (" ..." if len(bad) > 10 else ""))
        if not keep:
            raise UserError(f"{table.source}: every row lacks a text or a label; nothing is left to use.")
    return _Rows(texts=[texts[i].strip() for i in keep],
                 pairs=[pairs[i].strip() for i in keep] if pairs is not None else None,
                 raw=[raw[i] for i in keep], index=keep, table=table, rows_read=len(texts), skipped=skipped)


def _check_text_column(values: list, key: Any, what: str, table: Table) -> None:
    """Text must be text: not numbers, lists or objects (usually a wrong column or swapped text/label)."""
    present = [(i, v) for i, v in enumerate(values) if not _missing(v)]
    for i, v in present:
        if not isinstance(v, str):
            raise UserError(f"{table.where(i)}: the text column `{key}` (recipe key `data.{what}`) holds "
                            f"{type(v).__name__} {repr(v)[:60]}, not text. Point `data.{what}` at the column with "
                            f"the text (columns: {', '.join(map(str, table.names))}).")
    if present and all(_is_number_text(v) for _, v in present):
        i, v = present[0]
        raise UserError(f"{table.source}: the text column `{key}` (recipe key `data.{what}`) holds only numbers "
                        f"(e.g. {v!r} at {table.where(i).removeprefix(table.source + ', ')}), not text. Did you swap "
                        f"`data.text_column` and `data.label_column`? Columns: {', '.join(map(str, table.names))}.")


# ------------------------------------------------------------------------------------------------ labels

def _read_label_spec(spec: Any) -> Any:
    """`data.labels` as given: a list, a mapping, or a file of names (JSON list/mapping, or one per line)."""
    if not isinstance(spec, str):
        return spec
    path = _resolve_path(spec)
    if not path.is_file():
        raise UserError(f"`data.labels` is {spec!r}: give a list of label names, a mapping {{raw: name}}, or an "
                        "existing file with one name per line (or a JSON list).")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"`data.labels` file {path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class LabelSpace:
    """The label order and how raw values map onto it."""

    names: list[str]
    mapping: dict[str, str] | None = None  # {raw: name} from a `data.labels` mapping
    index_mode: bool = False  # raw values are 0-based ids into `names` (GoEmotions index lists)
    declared: bool = False  # the names come from `data.labels` (or a Hub dataset), not from train

    def known(self) -> set[str]:
        return set(self.names) | set(self.mapping or ())


def _key(value: Any) -> str:
    """A raw label atom as a string key: 3, 3.0 and '3' are the same class."""
    if type(value) is str:
        return value.strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def _atoms(value: Any, multi: bool, delimiter: str) -> list[Any]:
    """The label atoms of one row: one for single-label; several for multi-label lists/delimited strings."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if multi and isinstance(value, str):
        return [a.strip() for a in value.split(delimiter) if a.strip()]
    return [value]


def _label_transform(cfg: DataConfig):
    """`data.label_pattern` / `data.label_level` as a function on label strings (None: identity)."""
    if cfg.label_pattern and cfg.label_level != "full":
        raise UserError("Set either `data.label_pattern` or `data.label_level`, not both.")
    if cfg.label_level == "coarse":
        return lambda s: s.split(":", 1)[0]
    if not cfg.label_pattern:
        return None
    try:
        rx = re.compile(cfg.label_pattern)
    except re.error as e:
        raise UserError(f"`data.label_pattern` {cfg.label_pattern!r} is not a valid regular expression: {e}.") \
            from None

    def extract(s: str) -> str | None:
        m = rx.search(s)
        if m is None:
            return None
        if "label" in rx.groupindex:
            return m.group("label")
        return m.group(1) if rx.groups else m.group(0)

    return extract


def _normalise(rows: _Rows, cfg: DataConfig, declared: set[str], notes: list[str]) -> list[list[str]]:
    """Raw label values -> lists of string keys; type errors (floats, mixed, lists) name the row.

    Work is done once per distinct scalar value (labels repeat): the first row holding a value is the one an
    error names, the same row a row-by-row pass would stop at."""
    multi = cfg.multi_label
    transform = _label_transform(cfg)
    col = f"`{cfg.label_column}`" if not rows.table.fixed else "(the label)"
    first: dict[str, tuple[int, str]] = {}  # kind ("id", "name") -> first (row, key)
    floats: list[int] = []

    def keys_of(i: int, value: Any) -> list[str]:
        if isinstance(value, dict):
            raise UserError(f"{rows.where(i)}: the label {col} is an object {str(value)[:60]!r}; give a class name, "
                            "an integer id, or (multi-label) a list.")
        if not multi and isinstance(value, (list, tuple, np.ndarray)):
            raise UserError(f"{rows.where(i)}: the label {col} is a list ({list(value)[:5]!r}). For several labels "
                            "per example set `data.multi_label: true`.")
        if not multi and isinstance(value, str) and _INDEX_LIST.match(value) and value.strip() not in declared:
            raise UserError(f"{rows.where(i)}: the label {value!r} looks like several labels. Set "
                            "`data.multi_label: true` (and `data.label_delimiter` if they are not separated by `,`).")
        keys = []
        for atom in _atoms(value, multi, cfg.label_delimiter):
            if isinstance(atom, (float, np.floating)):
                if not float(atom).is_integer():
                    _float_error(rows, i, col, atom)
                floats.append(i)
            key = _key(atom)
            if isinstance(atom, str) and transform is not None and key not in declared:
                new = transform(key)
                if new is None:
                    raise UserError(f"{rows.where(i)}: `data.label_pattern` {cfg.label_pattern!r} does not match "
                                    f"the label {key!r}. Fix the pattern or the row.")
                key = new.strip()
            if key not in declared:
                if _INT.match(key):
                    first.setdefault("id", (i, key))
                elif _FLOAT.match(key):
                    _float_error(rows, i, col, key)
                else:
                    first.setdefault("name", (i, key))
            keys.append(key)
        return keys

    memo: dict[tuple[type, Any], list[str]] = {}
    out: list[list[str]] = []
    for i, value in enumerate(rows.raw):
        if isinstance(value, (str, int, float, np.integer, np.floating)):
            tag = (type(value), value)
            keys = memo.get(tag)
            if keys is None:
                keys = memo[tag] = keys_of(i, value)
            out.append(keys)
        else:
            out.append(keys_of(i, value))
    if "id" in first and "name" in first and not declared:
        (a, va), (b, vb) = first["id"], first["name"]
        raise UserError(
            f"{rows.table.source}: the label column {col} mixes integer ids and names ({va!r} at "
            f"{rows.where(a).removeprefix(rows.table.source + ', ')}, {vb!r} at "
            f"{rows.where(b).removeprefix(rows.table.source + ', ')}). Use one kind throughout, or list every class "
            "in `data.labels`."
        )
    if floats:
        _note(notes, f"{rows.table.source}: label column {col} holds whole numbers stored as floats (e.g. 1.0); "
                     "read as integer class ids.")
    return out


def _float_error(rows: _Rows, i: int, col: str, value: Any) -> None:
    raise UserError(
        f"{rows.where(i)}: the label column {col} holds the non-integer number {value!r}. A classification label "
        "must be a class name or an integer id: if these are scores, bin them into classes first; if the column is "
        "the wrong one, set `data.label_column`."
    )


def _sort_key(s: str):
    return (0, int(s), "") if _INT.match(s) else (1, 0, s)


def _label_space(cfg: DataConfig, train: list[list[str]], class_names: list[str] | None,
                 all_keys: list[list[list[str]]]) -> LabelSpace:
    spec = _read_label_spec(cfg.labels) if cfg.labels is not None else None
    if isinstance(spec, dict):
        mapping = {_key(k): str(v) for k, v in spec.items()}
        return LabelSpace(list(dict.fromkeys(mapping.values())), mapping=mapping, declared=True)
    if isinstance(spec, list):
        names = [str(x) for x in spec]
        declared = True
    elif spec is not None:
        raise UserError(f"`data.labels` must be a list of names, a mapping {{raw: name}} or a file; got {spec!r}.")
    elif class_names:
        names, declared = list(class_names), True
    else:
        names = sorted({k for keys in train for k in keys}, key=_sort_key)
        declared = False
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"`data.labels` names {', '.join(dupes)} more than once; each label must appear once.")
    index_mode = (declared and not all(_INT.match(n) for n in names)
                  and all(_INT.match(k) for split in all_keys for keys in split for k in keys))
    return LabelSpace(names, index_mode=index_mode, declared=declared)


def _encode(keys: list[list[str]], rows: _Rows, space: LabelSpace, split: str) -> list[list[int]]:
    """String keys -> class ids; unknown values and indices out of range name the row."""
    index = {n: i for i, n in enumerate(space.names)}
    out = []
    for i, row in enumerate(keys):
        ids = []
        for k in row:
            if space.mapping is not None:
                j = index.get(space.mapping.get(k, "\0"))
            elif space.index_mode:
                j = int(k)
                if not 0 <= j < len(space.names):
                    raise UserError(
                        f"{rows.where(i)}: label index {j} is out of range: `data.labels` has {len(space.names)} "
                        f"labels (ids 0..{len(space.names) - 1}). Fix the row, or give the full label list."
                    )
            else:
                j = index.get(k)
            if j is None:
                raise UserError(_unknown_label(k, rows.where(i), space, split))
            ids.append(j)
        out.append(ids)
    return out


def _unknown_label(key: str, where: str, space: LabelSpace, split: str) -> str:
    shown = ", ".join(space.names[:20]) + (f" ... ({len(space.names)} in all)" if len(space.names) > 20 else "")
    if space.mapping is not None:
        return (f"{where}: label {key!r} is not a key of the `data.labels` mapping (keys: "
                f"{', '.join(list(space.mapping)[:20])}). Add it to the mapping, or fix the row.")
    if not space.declared:
        return (f"{where}: label {key!r} does not occur in the training data (labels there: {shown}). Fix the "
                f"{split} row, or list every class in `data.labels`.")
    return f"{where}: label {key!r} is not one of the labels in `data.labels` ({shown}). Add it there, or fix the row."


# ------------------------------------------------------------------------------------------------ splits

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


def _by_class(keys: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(keys):
        out.setdefault(y, []).append(i)
    return dict(sorted(out.items()))


def _subset_stratified(keys: list[int], n: int, seed: int) -> list[int]:
    """`n` indices with the class proportions of `keys` (largest remainder; every class kept while n allows)."""
    groups = _by_class(keys)
    total = len(keys)
    quota = {y: len(idx) * n / total for y, idx in groups.items()}
    take = {y: int(q) for y, q in quota.items()}
    if n >= len(groups):
        for y in groups:
            take[y] = max(take[y], 1)
    order = sorted(groups, key=lambda y: (quota[y] - int(quota[y])), reverse=True)
    k = 0
    while sum(take.values()) < n:
        y = order[k % len(order)]
        if take[y] < len(groups[y]):
            take[y] += 1
        k += 1
    while sum(take.values()) > n:  # the minimum of one per class overshot: trim the largest classes
        y = max(take, key=lambda c: take[c])
        take[y] -= 1
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for y, idx in groups.items():
        out += [int(i) for i in rng.permutation(idx)[: take[y]]]
    return sorted(out)


def _subset_per_class(keys: list[int], k: int, seed: int, names: list[str], multi: bool) -> list[int]:
    groups = _by_class(keys)
    short = [(names[y] if y >= 0 else "(no label)", len(idx)) for y, idx in groups.items() if len(idx) < k]
    if short:
        listed = ", ".join(f"{n!r} has {c}" for n, c in short[:10]) + (" ..." if len(short) > 10 else "")
        what = " (rows counted under their rarest label)" if multi else ""
        raise UserError(f"`data.examples_per_class` is {k}, but some classes have fewer training examples{what}: "
                        f"{listed}. Lower `data.examples_per_class` to at most {min(c for _, c in short)}, or add "
                        "examples.")
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _y, idx in groups.items():
        out += [int(i) for i in rng.permutation(idx)[:k]]
    return sorted(out)


def strata(ids: list[list[int]], multi: bool, freq: np.ndarray) -> list[int]:
    """One class per row for stratification: the label itself, or a multi-label row's rarest label (-1: none)."""
    if not multi:
        return [row[0] for row in ids]
    return [min(row, key=lambda j: (freq[j], j)) if row else -1 for row in ids]


def text_key(text: str, pair: str | None = None) -> str:
    """What counts as 'the same example' for duplicates and leakage: the text (and pair), case and spacing kept."""
    return text if pair is None else f"{text}\x1f{pair}"


@dataclass
class _Split:
    texts: list[str]
    pairs: list[str] | None
    ids: list[list[int]]

    def take(self, idx: list[int]) -> _Split:
        return _Split([self.texts[i] for i in idx], [self.pairs[i] for i in idx] if self.pairs else None,
                      [self.ids[i] for i in idx])

    def keys(self) -> list[str]:
        return [text_key(t, self.pairs[i] if self.pairs else None) for i, t in enumerate(self.texts)]


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
    declared = _declared(cfg)
    rows = _rows(read_table(value, cfg, "train", notes), cfg, notes, declared)
    keys = _normalise(rows, cfg, declared, notes)
    raw = keys if cfg.multi_label else [k[0] for k in keys]
    return rows.texts, rows.pairs, raw, rows.table.source


def _declared(cfg: DataConfig) -> set[str]:
    """Label strings the recipe names itself (exempt from the missing/float/mixed heuristics)."""
    if cfg.labels is None:
        return set()
    spec = _read_label_spec(cfg.labels)
    if isinstance(spec, dict):
        return {_key(k) for k in spec} | {str(v) for v in spec.values()}
    return {str(x) for x in spec} if isinstance(spec, list) else set()


def load_splits(cfg: DataConfig, seed: int, memory: dict[str, InMemory] | None = None) -> Splits:
    """Read train/validation/test as the recipe says, fix the labels, de-duplicate, carve missing splits
    (stratified, seeded) and take few-shot subsets of train.

    `memory`: splits given from Python (`in_memory`), read in place of the recipe's `data.<split>`."""
    memory = memory or {}
    _check_config(cfg, memory)
    notes: list[str] = []
    declared = _declared(cfg)
    sources = {n: memory.get(n, getattr(cfg, n)) for n in SPLITS}
    given = [n for n in SPLITS if sources[n] is not None]
    rows = {n: _rows(read_table(sources[n], cfg, n, notes), cfg, notes, declared) for n in given}
    keys = {n: _normalise(r, cfg, declared, notes) for n, r in rows.items()}
    train_table = rows["train"].table
    label_col = train_table.names[cfg.label_column] \
        if isinstance(cfg.label_column, int) and train_table.header and cfg.label_column < len(train_table.names) \
        else cfg.label_column
    class_names = train_table.class_names.get(label_col)
    space = _label_space(cfg, keys["train"], class_names, list(keys.values()))
    ids = {n: _encode(keys[n], rows[n], space, n) for n in given}
    names, multi = space.names, cfg.multi_label
    freq = _label_freq(ids["train"], len(names))
    info = {n: {"source": r.table.source, "rows_read": r.rows_read, "skipped_rows": len(r.skipped),
                "label_counts_read": _counts(ids[n], names)} for n, r in rows.items()}
    for n in given[1:]:
        _check_seen(n, ids[n], rows[n], freq, names)
    data = {n: _Split(rows[n].texts, rows[n].pairs, ids[n]) for n in given}

    if cfg.dedupe:
        data["train"] = _dedupe_train(data["train"], notes)
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
        _note(notes, f"{split}: {len(carved):,} examples carved from train (stratified, seed {seed + salt}); "
                     f"{len(keep):,} left to train on.")
    if cfg.dedupe:
        _drop_leaks(data, given, notes)
    data["train"] = _few_shot(data["train"], cfg, seed, names, multi, freq, notes)
    missing = [names[j] for j in range(len(names)) if not any(j in row for row in data["train"].ids)]
    if missing:
        _note(notes, f"train has no example of {len(missing)} label(s) after subsetting: "
                     f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}.")
    sets = {n: _dataset(s, len(names), multi) for n, s in data.items()}
    return Splits(train=sets["train"], validation=sets.get("validation"), test=sets.get("test"), labels=names,
                  multi_label=multi, sources={n: rows[n].table.source for n in given}, notes=notes, info=info,
                  in_memory={n: m.record() for n, m in memory.items() if n in given})


def _label_freq(ids: list[list[int]], num_labels: int) -> np.ndarray:
    """Rows per label (a multi-label row counts once for each of its labels)."""
    return np.bincount(np.fromiter((j for row in ids for j in row), dtype=np.int64), minlength=num_labels)


def _counts(ids: list[list[int]], names: list[str]) -> dict[str, int]:
    c = _label_freq(ids, len(names))
    return {n: int(c[i]) for i, n in enumerate(names)}


def _check_seen(split: str, ids: list[list[int]], rows: _Rows, freq: np.ndarray, names: list[str]) -> None:
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


def _dedupe_train(train: _Split, notes: list[str]) -> _Split:
    seen: dict[str, int] = {}
    keep, conflicts = [], 0
    for i, k in enumerate(train.keys()):
        if k in seen:
            conflicts += train.ids[seen[k]] != train.ids[i]
            continue
        seen[k] = i
        keep.append(i)
    if len(keep) < len(train.texts):
        extra = f", {conflicts} of them with a different label than the kept copy" if conflicts else ""
        _note(notes, f"train: dropped {len(train.texts) - len(keep):,} duplicate text(s){extra} (data.dedupe); "
                     f"{len(keep):,} unique left.")
    return train.take(keep)


def _drop_leaks(data: dict[str, _Split], given: list[str], notes: list[str]) -> None:
    """With dedupe: train rows whose text is also in a given validation/test file leak; drop them from train."""
    for split in ("validation", "test"):
        if split not in given:
            continue  # carved after de-duplication: no overlap by construction
        other = set(data[split].keys())
        keys = data["train"].keys()
        keep = [i for i, k in enumerate(keys) if k not in other]
        if len(keep) < len(keys):
            _note(notes, f"train: dropped {len(keys) - len(keep):,} text(s) that also occur in {split} "
                         "(data.dedupe: leakage).")
            data["train"] = data["train"].take(keep)


def _few_shot(train: _Split, cfg: DataConfig, seed: int, names: list[str], multi: bool, freq: np.ndarray,
              notes: list[str]) -> _Split:
    if cfg.examples_per_class is not None:
        idx = _subset_per_class(strata(train.ids, multi, freq), cfg.examples_per_class, seed + 3, names, multi)
        train = train.take(idx)
        _note(notes, f"train: {cfg.examples_per_class} examples per class, {len(idx):,} in all "
                     f"(drawn with training.seed {seed}).")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train.texts):
        idx = _subset_stratified(strata(train.ids, multi, freq), cfg.max_train_examples, seed + 4)
        _note(notes, f"train: limited to {len(idx):,} of {len(train.texts):,} examples (data.max_train_examples, "
                     f"stratified, seed {seed + 4}).")
        train = train.take(idx)
    return train


def _dataset(split: _Split, num_labels: int, multi: bool):
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
