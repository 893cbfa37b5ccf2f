"""From one recipe value to the usable rows of a split: `read_table` sends the value (file, folder,
{label: file}, `hub:<id>`, in-memory table) to its reader; `usable_rows` picks the text, pair and label
columns, checks the text is text, and stops at (or, with `data.skip_bad_rows`, skips) rows missing a text or
label, naming the file and row."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.hub import read_hub
from textxfer.data.memory import IN_MEMORY_PREFIX, InMemory
from textxfer.data.notes import note
from textxfer.data.tables import (
    Table,
    decode_file,
    format_of,
    read_delimited,
    read_json,
    read_parquet,
    resolve_path,
)
from textxfer.data.text_files import read_per_class, read_prefix

# label cells that mean "no label" unless `data.labels` names them as real classes
MISSING_LABELS = {"nan", "NaN", "NAN", "None", "null", "NULL"}
# a cell that is a whole number / a non-integer number (text columns of numbers; integer ids vs names)
INTEGER_TEXT = re.compile(r"^[+-]?\d+$")
FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")


def read_table(value: Any, cfg: DataConfig, split: str, notes: list[str]) -> Table:
    """Dispatch one recipe value (`data.train` etc.) to its reader."""
    if isinstance(value, InMemory):
        return value.table
    if isinstance(value, str) and value.startswith(IN_MEMORY_PREFIX):
        raise UserError(f"`data.{split}` was given from Python ({value}), so there is no file to read. Pass the data "
                        f"again (`textxfer.train(recipe, {split}=...)`, with `resume=True` to continue that run), or "
                        f"point `data.{split}` at a file.")
    if isinstance(value, dict):
        return read_per_class({str(k): v for k, v in value.items()}, cfg, notes)
    if not isinstance(value, str):
        raise UserError(f"`data.{split}` is {value!r}: give a file, a folder, `hub:<dataset id>`, or "
                        "{label: file} for one file per class.")
    if value.startswith("hub:"):
        return read_hub(value.removeprefix("hub:"), cfg, split)
    path = resolve_path(value)
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"Data folder {path} has no class folders (expected {path}/<label>/*.txt). Point "
                            f"`data.{split}` at a file, or put one folder per class in it.")
        return read_per_class({c.name: c for c in classes}, cfg, notes, source=str(path))
    if not path.is_file():
        raise UserError(f"Data file {path} does not exist (recipe key `data.{split}`). Check the path; recipes "
                        "for the shared datasets read them under ${TEXTXFER_DATA}.")
    fmt = format_of(path, cfg)
    if fmt == "parquet":
        return read_parquet(path)
    content = decode_file(path, cfg, notes)
    if not content.strip():
        raise UserError(f"Data file {path} is empty. Point `data.{split}` at a file with examples.")
    if fmt in ("csv", "tsv"):
        return read_delimited(path, content, cfg, fmt, notes)
    if fmt in ("json", "jsonl"):
        return read_json(path, content, fmt == "jsonl")
    return read_prefix(path, content, cfg, fmt, notes)


def pick_column(table: Table, key: Any, what: str) -> list:
    """The values of one column, by name or 0-based number; a clear error listing the columns otherwise."""
    if table.fixed:
        if what == "text_pair_column":
            raise UserError(f"{table.source}: `data.text_pair_column` needs a table (CSV/TSV/JSON/Parquet); these "
                            "files have one text per line.")
        return table.columns["text" if what in ("text_column", "unlabelled_text_column") else "label"]
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
    return bool(INTEGER_TEXT.match(v) or FLOAT_TEXT.match(v))


@dataclass
class SplitRows:
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


def usable_rows(table: Table, cfg: DataConfig, notes: list[str], declared: set[str], whole: bool = True) -> SplitRows:
    """The rows with a text (and pair) and a label, stripped; rows missing one stop the run (naming up to ten),
    or with `data.skip_bad_rows` are skipped and noted. `whole` False: `table` is one chunk of a file read in
    chunks, and the caller notes the skipped rows of all chunks at once."""
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
        none = (" A multi-label text with none of the labels is an empty list `[]` in JSON Lines or Parquet; a "
                "CSV/TSV cell cannot say that, so convert the file, or give such texts a label of their own (e.g. "
                "`none`)." if cfg.multi_label and any("is empty" in what for _, what in bad) else "")
        raise UserError(f"{table.source}: {len(bad)} row(s) with a missing text or label: {shown}. Fix those rows, "
                        f"or set `data.skip_bad_rows: true` to skip them with a warning.{none}")
    keep = list(range(len(texts)))
    if bad:
        dropped = {i for i, _ in bad}
        keep = [i for i in keep if i not in dropped]
    if bad and whole:
        note(notes, f"{table.source}: skipped {len(bad)} row(s) with a missing text or label "
                     f"(data.skip_bad_rows): " + "; ".join(skipped[:10]) + (" ..." if len(bad) > 10 else ""))
        if not keep:
            raise UserError(f"{table.source}: every row lacks a text or a label; nothing is left to use.")
    return SplitRows(texts=[texts[i].strip() for i in keep],
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
