"""Large splits on disk: a file above `STORE_ABOVE_BYTES` (or a Hub split above `STORE_ABOVE_ROWS` rows) is read
chunk by chunk (`streaming.py`), each chunk checked as it is read (missing texts and labels, label types: the
whole-file reader's checks and messages, naming the file and row, so a bad row stops the run within seconds, not
after an hour) and appended to an Arrow file that is then memory-mapped (`datasets.Dataset.from_file`). What is
held in memory is a few numpy arrays of one number per row: never a Python object per row.

The Arrow file holds, per usable row: `text` (and `text_pair`), the label `key` (the raw label as a string key,
`labels.py`), the source `row` number (for messages) and a 64-bit `hash` of the text (de-duplication). It is kept
in the cache folder under a key of the file (path, size, modification time) and the reading settings, with what
reading it said (notes, skipped rows, label values and the first row of each): a later run with the same file
and settings maps it again without reading the file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.environment import cache_root
from textxfer.core.errors import UserError
from textxfer.data.labels import LabelNormaliser, LabelSpace, encode_labels
from textxfer.data.notes import note
from textxfer.data.rows import usable_rows
from textxfer.data.sampling import text_key
from textxfer.data.streaming import STREAMED_FORMATS, stream_file
from textxfer.data.tables import Table, format_of, resolve_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from datasets import Dataset

STORE_ABOVE_BYTES = 16 << 20
"""Files larger than this are read in chunks into a memory-mapped Arrow file (about 300k short texts). Smaller
files are read whole, as Python lists: as fast, and every small-data step works on them unchanged."""

STORE_ABOVE_ROWS = 300_000
"""Hub splits with more rows than this are copied into the Arrow file in chunks, not read as Python lists."""

STORE_VERSION = 1
"""Part of the key of a stored split: raised when what is stored, or how it is checked, changes."""

READING_KEYS = ("format", "text_column", "text_pair_column", "label_column", "delimiter", "quoting", "header",
                "encoding", "label_separator", "labels", "multi_label", "label_delimiter", "label_pattern",
                "label_level", "skip_bad_rows", "hub_config", "hub_revision")
"""The `data.*` keys that change what reading a file gives (the others act on the rows once read)."""


def data_cache_dir() -> Path:
    """Where stored splits are kept (`$TEXTXFER_CACHE/data`)."""
    return cache_root() / "data"


@dataclass
class StoredRows:
    """One split's usable rows in a memory-mapped Arrow file, and what reading them found."""

    dataset: Dataset
    source: str
    unit: str
    rows_read: int
    skipped: list[str]
    first_where: dict[str, str]
    """Each label key, in order of first appearance, and where it first appears (for errors)."""
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    @cached_property
    def rows(self) -> np.ndarray:
        return self.dataset.data.column("row").to_numpy()

    @cached_property
    def hashes(self) -> np.ndarray:
        return self.dataset.data.column("hash").to_numpy()

    def where(self, i: int) -> str:
        return f"{self.source}, {self.unit} {int(self.rows[i])}"

    def texts_at(self, idx: np.ndarray) -> list[str]:
        """The text keys (`sampling.text_key`) of these rows: for checking that equal hashes are equal texts."""
        import pyarrow as pa

        table = self.dataset.data.table
        take = pa.array(np.asarray(idx, dtype=np.int64))
        texts = table.column("text").take(take).to_pylist()
        if "text_pair" not in table.column_names:
            return texts
        pairs = table.column("text_pair").take(take).to_pylist()
        return [text_key(t, p) for t, p in zip(texts, pairs, strict=True)]

    def label_ids(self, space: LabelSpace, split: str) -> np.ndarray:
        """One class id per row; a label that does not fit `space` names its first row (`encode_labels`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        distinct = list(self.first_where)
        ids = encode_labels([[k] for k in distinct], _FirstRows(self, distinct), space, split)
        lut = np.asarray([row[0] for row in ids], dtype=np.int64)
        codes = pc.index_in(self.dataset.data.column("key"), value_set=pa.array(distinct, pa.string()))
        return lut[codes.to_numpy()]


@dataclass
class _FirstRows:
    """`encode_labels` over the distinct label keys of a stored split: row d is where key d first occurs."""

    stored: StoredRows
    distinct: list[str]

    def where(self, d: int) -> str:
        return self.stored.first_where[self.distinct[d]]


def open_stored(value: Any, cfg: DataConfig, split: str, notes: list[str], declared: set[str]) -> StoredRows | None:
    """The split as a `StoredRows` when it is a file large enough to be read in chunks (single-label, of a
    `STREAMED_FORMATS` format, above `STORE_ABOVE_BYTES`); None: read it whole (`rows.read_table`). Hub splits:
    `store_hub`."""
    if not isinstance(value, str) or cfg.multi_label or value.startswith("hub:"):
        return None
    path = resolve_path(value)
    if not path.is_file() or path.stat().st_size < STORE_ABOVE_BYTES:
        return None
    fmt = format_of(path, cfg)
    if fmt not in STREAMED_FORMATS:
        return None
    stat = path.stat()
    identity = {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    unit = "row" if fmt in ("csv", "tsv", "parquet") else "line"
    return _stored(identity, str(path), unit, cfg, declared, notes,
                   lambda: stream_file(path, cfg, fmt, notes), class_names=None)


def store_hub(ds: Dataset, source: str, cfg: DataConfig, notes: list[str], declared: set[str]) -> StoredRows:
    """A loaded Hub split (`hub.load_hub`) of more than `STORE_ABOVE_ROWS` rows, checked chunk by chunk into a
    stored split."""
    from textxfer.data.hub import class_label_names

    names = list(ds.column_names)
    wanted = [k for k in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if k is not None]
    wanted = [names[k] if isinstance(k, int) and k < len(names) else k for k in wanted]
    classes = class_label_names(ds, [c for c in wanted if c in names])

    def chunks() -> Iterator[Table]:
        from textxfer.data.streaming import CHUNK_ROWS

        plain = ds.with_format(None)
        for start in range(0, len(ds), CHUNK_ROWS):
            part = plain[start:start + CHUNK_ROWS]
            n = len(next(iter(part.values())))
            yield Table({c: part[c] for c in names if c in wanted}, source, names=names, class_names=classes,
                        rows=list(range(start + 1, start + n + 1)))

    label_col = names[cfg.label_column] if isinstance(cfg.label_column, int) else cfg.label_column
    return _stored({"hub": source, "fingerprint": ds._fingerprint}, source, "row", cfg, declared, notes, chunks,
                   class_names=classes.get(label_col))


def _key(identity: dict, cfg: DataConfig, declared: set[str]) -> str:
    settings = {k: getattr(cfg, k) for k in READING_KEYS}
    blob = json.dumps({"identity": identity, "settings": settings, "declared": sorted(declared),
                       "version": STORE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _stored(identity: dict, source: str, unit: str, cfg: DataConfig, declared: set[str], notes: list[str],
            chunks, class_names: list[str] | None) -> StoredRows:
    """Map the stored split under this file's key, or read the file into it first."""
    from datasets import Dataset

    folder = data_cache_dir()
    key = _key(identity, cfg, declared)
    arrow, meta_path = folder / f"{key}.arrow", folder / f"{key}.json"
    if not (arrow.is_file() and meta_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        meta = _write(arrow, source, cfg, declared, notes, chunks, class_names)
        tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, ensure_ascii=False))
        os.replace(tmp, meta_path)
        said = "read into"
    else:
        meta = json.loads(meta_path.read_text())
        for message in meta["notes"]:
            note(notes, message)
        said = "mapped from"
    stored = StoredRows(Dataset.from_file(str(arrow)), source, unit, meta["rows_read"], meta["skipped"],
                        meta["first_where"], meta["class_names"], meta["notes"])
    note(notes, f"{source}: {len(stored):,} rows {said} the memory-mapped file {arrow} (read in chunks: files "
                 f"above {STORE_ABOVE_BYTES >> 20} MB).")
    return stored


def _write(arrow: Path, source: str, cfg: DataConfig, declared: set[str], notes: list[str], chunks,
           class_names: list[str] | None) -> dict:
    """Read every chunk, check it, append its usable rows to `arrow` (written under a temporary name, then
    renamed); returns what reading said."""
    import pyarrow as pa
    import xxhash

    before = len(notes)
    normaliser = LabelNormaliser(cfg, declared)
    pairs = cfg.text_pair_column is not None
    fields = [("text", pa.string())] + ([("text_pair", pa.string())] if pairs else []) + \
        [("key", pa.string()), ("row", pa.int64()), ("hash", pa.uint64())]
    schema = pa.schema(fields)
    first_where: dict[str, str] = {}
    skipped: list[str] = []
    rows_read = 0
    tmp = arrow.with_name(f".{arrow.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for table in chunks():
                rows = usable_rows(table, cfg, notes, declared, whole=False)
                keys = [k[0] for k in normaliser.add(rows)]
                for k in dict.fromkeys(keys):
                    if k not in first_where:
                        first_where[k] = rows.where(keys.index(k))
                numbers = [table.rows[i] if table.rows else i + 1 for i in rows.index]
                hashes = np.fromiter(
                    (xxhash.xxh3_64_intdigest(text_key(t, p).encode()) for t, p in
                     zip(rows.texts, rows.pairs if pairs else [None] * len(rows.texts), strict=True)),
                    dtype=np.uint64, count=len(rows.texts))
                columns = [pa.array(rows.texts, pa.string())] + \
                    ([pa.array(rows.pairs, pa.string())] if pairs else []) + \
                    [pa.array(keys, pa.string()), pa.array(numbers, pa.int64()), pa.array(hashes, pa.uint64())]
                writer.write_batch(pa.record_batch(columns, schema=schema))
                rows_read += rows.rows_read
                skipped += rows.skipped
        normaliser.finish(source, notes)
        if skipped:
            note(notes, f"{source}: skipped {len(skipped)} row(s) with a missing text or label "
                         f"(data.skip_bad_rows): " + "; ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
            if len(skipped) == rows_read:
                raise UserError(f"{source}: every row lacks a text or a label; nothing is left to use.")
        os.replace(tmp, arrow)
    finally:
        tmp.unlink(missing_ok=True)
    return {"source": source, "rows_read": rows_read, "skipped": skipped, "first_where": first_where,
            "class_names": class_names, "notes": notes[before:]}
