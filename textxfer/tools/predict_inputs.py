"""Texts to predict, read in chunks whatever the input's size: CSV/TSV (with a header), JSONL, Parquet, plain text
(one text per line) or stdin, one file or several in a row. Never every row at once: a chunk of rows is read,
predicted and written before the next is read, so memory stays the same for ten thousand rows or ten million.

A bad row is named by file and row when it is reached (a JSON line that does not parse, a missing column), not
after an hour of reading ahead."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textxfer.core.errors import UserError

TABLES = (".csv", ".tsv")
LINES = (".jsonl", ".ndjson")
PARQUET = (".parquet", ".pq")


@dataclass
class Chunk:
    texts: list[str]
    pairs: list[str] | None


@dataclass
class Inputs:
    """Where the texts come from and how to read them: `chunks(size, skip)` yields them in input order."""

    sources: list[str]
    text_column: str
    pair_column: str | int | None = None
    pair_why: str = "--pair-column"

    def __post_init__(self):
        for source in self.sources:
            if source != "-" and not Path(source).is_file():
                raise UserError(f"Input file {source} does not exist. Give CSV/TSV/JSONL/Parquet files, text files "
                                "(one text per line), or `-` for stdin.")
            kind = kind_of(source)
            if self.pair_column is not None and kind == "lines":
                raise UserError(f"{'stdin' if source == '-' else source} has one text per line, but the model reads "
                                f"sentence pairs (second text: column `{self.pair_column}`, {self.pair_why}). Give a "
                                "CSV/TSV/JSONL/Parquet file with both columns (--text-column, --pair-column).")

    def estimated_rows(self) -> int | None:
        """Rows to expect (for the progress bar): Parquet metadata, else newline counts (a quoted newline in a
        CSV cell counts one too many); None for stdin."""
        total = 0
        for source in self.sources:
            if source == "-":
                return None
            kind = kind_of(source)
            if kind == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(source).metadata.num_rows
                continue
            newlines, last = 0, b"\n"
            with open(source, "rb") as f:
                while block := f.read(1 << 20):
                    newlines += block.count(b"\n")
                    last = block[-1:]
            total += newlines + (last != b"\n") - (kind == "table")
        return max(total, 0)

    def chunks(self, size: int, skip: int = 0) -> Iterator[Chunk]:
        """Chunks of at most `size` rows, in input order, after the first `skip` rows (read and dropped: a
        resumed prediction)."""
        texts: list[str] = []
        pairs: list[str] = []
        for text, pair in self.rows():
            if skip:
                skip -= 1
                continue
            texts.append(text)
            pairs.append(pair)
            if len(texts) >= size:
                yield Chunk(texts, pairs if self.pair_column is not None else None)
                texts, pairs = [], []
        if texts:
            yield Chunk(texts, pairs if self.pair_column is not None else None)

    def rows(self) -> Iterator[tuple[str, str | None]]:
        for source in self.sources:
            kind = kind_of(source)
            if kind == "lines":
                yield from self.plain_lines(source)
            elif kind == "table":
                yield from self.table_rows(source)
            elif kind == "jsonl":
                yield from self.json_lines(source)
            else:
                yield from self.parquet_rows(source)

    def plain_lines(self, source: str) -> Iterator[tuple[str, None]]:
        stream = sys.stdin if source == "-" else open(source, encoding="utf-8")
        try:
            for line in stream:
                if line.strip():
                    yield line.rstrip("\r\n"), None
        finally:
            if stream is not sys.stdin:
                stream.close()

    def table_rows(self, source: str) -> Iterator[tuple[str, str | None]]:
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if source.lower().endswith(".tsv") else ",")
            header = next(reader, None)
            if header is None:
                raise UserError(f"Input file {source} has no rows.")
            text_at = self.column_index(source, header, self.text_column, "--text-column")
            pair_at = (self.column_index(source, header, self.pair_column, self.pair_why)
                       if self.pair_column is not None else None)
            for row in reader:
                if not row:
                    continue
                if max(text_at, pair_at or 0) >= len(row):
                    raise UserError(f"{source}, row {reader.line_num}: {len(row)} fields, but the header has "
                                    f"{len(header)}; fix the row (a missing separator or an unquoted one).")
                yield row[text_at], (row[pair_at] if pair_at is not None else None)

    def column_index(self, source: str, header: list[str], column, why: str) -> int:
        key = str(column)
        if key in header:
            return header.index(key)
        if key.isdigit() and int(key) < len(header):  # a 0-based column number
            return int(key)
        raise UserError(f"{source} has no column `{column}` ({why}); columns: {', '.join(header[:30])}. "
                        f"Use {why if why.startswith('--') else '--text-column / --pair-column'}.")

    def json_lines(self, source: str) -> Iterator[tuple[str, str | None]]:
        with open(source, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{source}, line {number}: not valid JSON ({e.msg}).") from None
                if not isinstance(row, dict) or self.text_column not in row:
                    raise UserError(f"{source}, line {number}: no key `{self.text_column}`. Use --text-column.")
                pair = None
                if self.pair_column is not None:
                    if str(self.pair_column) not in row:
                        raise UserError(f"{source}, line {number}: no key `{self.pair_column}` for the second text "
                                        f"of the pair ({self.pair_why}). Use --pair-column.")
                    pair = text_value(row[str(self.pair_column)], source, number)
                yield text_value(row[self.text_column], source, number), pair

    def parquet_rows(self, source: str) -> Iterator[tuple[str, str | None]]:
        import pyarrow.parquet as pq

        file = pq.ParquetFile(source)
        names = file.schema_arrow.names
        wanted = [self.text_column] + ([str(self.pair_column)] if self.pair_column is not None else [])
        for column in wanted:
            if column not in names:
                raise UserError(f"{source} has no column `{column}`; columns: {', '.join(names[:30])}. "
                                "Use --text-column / --pair-column.")
        number = 0
        for batch in file.iter_batches(batch_size=4096, columns=wanted):
            columns = [batch.column(c).to_pylist() for c in wanted]
            for i, text in enumerate(columns[0]):
                number += 1
                yield (text_value(text, source, number),
                       text_value(columns[1][i], source, number) if len(columns) > 1 else None)


def kind_of(source: str) -> str:
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix in TABLES:
        return "table"
    if suffix in LINES:
        return "jsonl"
    if suffix in PARQUET:
        return "parquet"
    return "lines"


def text_value(value, source: str, row: int) -> str:
    if value is None:
        raise UserError(f"{source}, row {row}: the text is empty (null). Remove the row or give it a text.")
    return str(value)
