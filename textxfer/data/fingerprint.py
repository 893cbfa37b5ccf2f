"""Stable content hashes of data: of a prepared split (for caches and the run record) and of a table given from
Python (so a saved recipe can name the rows it was trained on). Also `column`, the fast way to read a
`datasets.Dataset` column as a list, which the split fingerprint and many callers use."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from textxfer.data.tables import Table

if TYPE_CHECKING:
    from datasets import Dataset


def column(ds: Dataset, name: str) -> list:
    """A column as a Python list, fast: `list(ds[name])` walks datasets 5's lazy Column row by row; slicing it
    converts the Arrow column in one go."""
    return ds[name][:]


FINGERPRINT_ROWS = 20_000
"""Rows serialised at a time by `fingerprint`: a split of millions is hashed in bounded memory."""


def fingerprint(ds: Dataset) -> str:
    """A stable hash of a split's texts (or image paths) and labels (for caches and for the run record): of each
    column's JSON text, fed to the hash a block of rows at a time (the same bytes as the whole column's
    `json.dumps`, so the value does not depend on the split's size or how it is stored)."""
    h = hashlib.sha256()
    for col in ("text", "text_pair", "image", "label", "labels"):
        if col in ds.column_names:
            values = ds[col]
            h.update(b"[")
            for start in range(0, len(ds), FINGERPRINT_ROWS):
                if start:
                    h.update(b", ")
                h.update(json.dumps(values[start:start + FINGERPRINT_ROWS], ensure_ascii=False)[1:-1].encode())
            h.update(b"]")
    return h.hexdigest()[:16]


def _plain(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def content_fingerprint(table: Table) -> str:
    """A stable hash of the rows as given (column names, values in order, ClassLabel names): the same rows give
    the same fingerprint in any process, whether they come as a DataFrame or a Dataset."""
    h = hashlib.sha256()
    for name in table.names:
        h.update(json.dumps([str(name), table.columns[name]], ensure_ascii=False, default=_plain).encode())
    if table.class_names:
        h.update(json.dumps({str(k): v for k, v in table.class_names.items()}, sort_keys=True).encode())
    return h.hexdigest()[:16]
