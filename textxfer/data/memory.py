"""Splits given from Python (`textxfer.train(recipe, train=df)`): a pandas DataFrame or a `datasets.Dataset`
becomes the same `Table` a file becomes, so every later step (columns, labels, bad rows, dedupe, carving) runs
the file path's code, and the saved recipe records a description and fingerprint in place of a path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textxfer.core.errors import UserError
from textxfer.data.fingerprint import content_fingerprint
from textxfer.data.hub import class_label_names
from textxfer.data.tables import Table

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
    return InMemory(split, kind, table, content_fingerprint(table))


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
    return Table(columns, source, names=names, index=range(len(ds)), class_names=class_label_names(ds, names))
