"""Large files read in chunks: CSV/TSV, JSON Lines and Parquet files as a sequence of `Table`s of `CHUNK_ROWS`
rows each, whose row numbers count from the start of the file. The settings the whole-file readers take from
the content (encoding, delimiter, header) are taken from its beginning and said the same way, so a file reads the
same in chunks as whole; a malformed line stops the reading there, naming the file and line."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.tables import (
    Table,
    csv_error,
    csv_options,
    delimiter_hint,
    has_header,
    header_names,
    json_line,
    parse_separator,
    records_table,
    sniff_delimiter,
    text_codec,
    undecodable,
)

CHUNK_ROWS = 50_000
"""Rows per chunk: large enough that per-chunk costs vanish, small enough that a chunk's Python objects are a few
MB whatever the file's size."""

STREAMED_FORMATS = ("csv", "tsv", "jsonl", "parquet")
"""Formats read in chunks. A JSON document (not JSON Lines) is one value and is parsed whole; prefix lines and
per-class files are small by nature."""

_SAMPLE_BYTES = 1 << 16


def file_encoding(path: Path, cfg: DataConfig, notes: list[str]) -> str:
    """The codec to read a text file with: the recipe's, or UTF-8 (BOM tolerated) with the whole-file reader's
    Latin-1 fallback, found by one pass over the bytes (`decode_file` says it in the same words)."""
    with open(path, "rb") as f:
        codec = text_codec(path, f.read(8192), cfg)
    bad = _first_bad_byte(path, codec if codec != "utf-8" else "utf-8-sig")
    if bad is None:
        return "utf-8-sig" if codec == "utf-8" else codec
    return undecodable(path, *bad, codec, cfg, notes)


def _first_bad_byte(path: Path, codec: str) -> tuple[int, int] | None:
    """(byte, 1-based line) of the first byte that does not decode, or None: 1 MB at a time."""
    decoder = codecs.getincrementaldecoder(codec)()
    lines = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:  # e.object: the block with the bytes the decoder held back before it
                data = e.object
                return data[e.start], lines + data.count(b"\n", 0, e.start) + 1
            if not block:
                return None
            lines += block.count(b"\n")


def stream_file(path: Path, cfg: DataConfig, fmt: str, notes: list[str]) -> Iterator[Table]:
    """The file's rows as `Table`s of at most `CHUNK_ROWS` rows (`STREAMED_FORMATS`)."""
    if fmt == "parquet":
        yield from _parquet_chunks(path)
    elif fmt == "jsonl":
        yield from _json_lines_chunks(path, file_encoding(path, cfg, notes))
    else:
        yield from _delimited_chunks(path, cfg, fmt, notes)


def _delimited_chunks(path: Path, cfg: DataConfig, fmt: str, notes: list[str]) -> Iterator[Table]:
    import pandas as pd

    encoding = file_encoding(path, cfg, notes)
    with open(path, "rb") as f:
        sample = f.read(_SAMPLE_BYTES).decode(encoding, errors="replace")
    sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines only
    if not sample.strip():
        raise UserError(f"Data file {path} is empty. Point the recipe at a file with examples.")
    sep = parse_separator(cfg.delimiter) or ("\t" if fmt == "tsv" else sniff_delimiter(sample, path, notes))
    quoting, options = csv_options(cfg, sep, sample, path, notes)
    reader = pd.read_csv(path, encoding=encoding, chunksize=CHUNK_ROWS, **options)
    names: list | None = None
    header = False
    start = 0
    try:
        for frame in reader:
            cells = [frame[c].tolist() for c in frame.columns]
            if names is None:
                hint = delimiter_hint(sample, sep, cfg, fmt, path) if len(cells) == 1 else ""
                header = has_header(cells, cfg, path, notes)
                names = list(range(len(cells)))
                if header:
                    names = header_names(cells)
                    cells = [c[1:] for c in cells]
                    if not cells[0]:
                        continue
            if len(cells) != len(names):
                raise UserError(f"{path}, row {start + 1}: {len(cells)} columns where the first rows have "
                                f"{len(names)}. Check `data.delimiter` and `data.quoting`.")
            n = len(cells[0])
            yield Table(dict(zip(names, cells, strict=True)), str(path), names=names, header=header, hint=hint,
                        rows=list(range(start + 1, start + n + 1)))
            start += n
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as e:
        raise csv_error(path, fmt, sep, quoting, e) from None
    if names is not None and header and start == 0:
        raise UserError(f"Data file {path} has a header ({', '.join(map(str, names))}) but no rows. Add examples to "
                        "it, or set `data.header: false` if that line is an example.")


def _json_lines_chunks(path: Path, encoding: str) -> Iterator[Table]:
    names: dict = {}
    records, rows = [], []
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            records.append(json_line(path, n, line))
            rows.append(n)
            if len(records) == CHUNK_ROWS:
                yield records_table(path, records, rows, "line", names)
                records, rows = [], []
    if records:
        yield records_table(path, records, rows, "line", names)
    elif not names:
        raise UserError(f"Data file {path} holds no records. Add examples to it.")


def _parquet_chunks(path: Path) -> Iterator[Table]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"Could not read {path} as Parquet: {str(e).splitlines()[0]}. Check `data.format`.") \
            from None
    names = list(file.schema_arrow.names)
    if file.metadata.num_rows == 0:
        raise UserError(f"Data file {path} has columns ({', '.join(names)}) but no rows.")
    start = 0
    for batch in file.iter_batches(batch_size=CHUNK_ROWS):
        n = batch.num_rows
        yield Table(batch.to_pydict(), str(path), names=names, rows=list(range(start + 1, start + n + 1)))
        start += n
