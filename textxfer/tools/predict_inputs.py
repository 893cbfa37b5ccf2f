"""Texts to predict, read in chunks whatever the input's size: CSV/TSV (with a header), JSONL, Parquet, plain text
(one text per line) or stdin, one file or several in a row. Never every row at once: a chunk of rows is read,
predicted and written before the next is read, so memory stays the same for ten thousand rows or ten million.

A bad row is named by file and row when it is reached (a JSON line that does not parse, a missing column, more
fields than the header), not after an hour of reading ahead. Files are read as training reads them: UTF-8 (a BOM
tolerated), or Latin-1 when a byte is not UTF-8, said once with the line."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

TABLES = (".csv", ".tsv")
LINES = (".jsonl", ".ndjson")
PARQUET = (".parquet", ".pq")


@dataclass
class Chunk:
    texts: list[str]
    pairs: list[str] | None
    kept: list[tuple] | None = None
    """Per row, the values of the `Inputs.keep` columns (None when none are kept)."""


@dataclass
class Inputs:
    """Where the texts come from and how to read them: `chunks(size, skip)` yields them in input order."""

    sources: list[str]
    text_column: str
    pair_column: str | int | None = None
    pair_why: str = "--pair-column"
    say: Callable[[str], None] = field(default=log.warning, repr=False)
    """Where notes on the input go (a Latin-1 fallback, blank lines or empty texts): once per file."""
    note_empty: bool = True
    """Say how many rows have an empty text (prediction keeps them; a caller that drops them says so itself)."""
    keep: tuple[str, ...] = ()
    """Columns copied from each input row into its output row (`--keep-column`: an id, a date)."""

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
            if self.keep and kind == "lines":
                raise UserError(f"{'stdin' if source == '-' else source} has one text per line and no columns to keep "
                                f"(--keep-column {self.keep[0]}). Give a CSV/TSV/JSONL/Parquet file with that column.")

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
        kept: list[tuple] = []

        def chunk() -> Chunk:
            return Chunk(texts, pairs if self.pair_column is not None else None, kept if self.keep else None)

        for text, pair, values in self.records():
            if skip:
                skip -= 1
                continue
            texts.append(text)
            pairs.append(pair)
            kept.append(values)
            if len(texts) >= size:
                yield chunk()
                texts, pairs, kept = [], [], []
        if texts:
            yield chunk()

    def rows(self) -> Iterator[tuple[str, str | None]]:
        """(text, second text or None) of every row of every source, in order."""
        return ((text, pair) for text, pair, _ in self.records())

    def records(self) -> Iterator[tuple[str, str | None, tuple]]:
        """(text, second text or None, kept values) of every row of every source, in order; a source without rows
        is said."""
        readers = {"lines": self.plain_lines, "table": self.table_rows, "jsonl": self.json_lines,
                   "parquet": self.parquet_rows}
        for source in self.sources:
            count = 0
            for row in readers[kind_of(source)](source):
                count += 1
                yield row
            if not count:
                self.say(f"{'stdin' if source == '-' else source}: no rows to read")

    def plain_lines(self, source: str) -> Iterator[tuple[str, None, tuple]]:
        """One text per non-blank line (blank lines separate nothing and are skipped, counted in a note)."""
        blank = 0
        with self.open_text(source) as stream:
            for line in stream:
                if line.strip():
                    yield line.rstrip("\r\n"), None, ()
                else:
                    blank += 1
        if blank:
            self.say(f"{'stdin' if source == '-' else source}: {blank:,} blank line(s) skipped; the output has one "
                     "row per non-blank line")

    def open_text(self, source: str, newline: str | None = None):
        """The file (or stdin) as text: UTF-8 with a BOM tolerated, or Latin-1 where it is not UTF-8, as training
        reads it (`data.streaming.file_encoding` finds it for a file; stdin falls back line by line)."""
        if source == "-":
            return _StdinText(self.say)
        from textxfer.config.schema import DataConfig
        from textxfer.data.streaming import file_encoding

        with open(source, "rb") as f:
            if b"\x00" in f.read(8192):
                raise UserError(f"{source} is binary, not text. Give CSV/TSV/JSONL files, Parquet files (.parquet) "
                                "or plain text (one text per line).")
        notes: list[str] = []
        codec = file_encoding(Path(source), DataConfig(), notes)
        for note in notes:
            self.say(note.replace("Set `data.encoding: latin-1` to say so, or re-save", "Re-save"))
        return open(source, encoding=codec, newline=newline)

    def table_rows(self, source: str) -> Iterator[tuple[str, str | None, tuple]]:
        empty = _EmptyTexts(source, self.say if self.note_empty else None)
        with self.open_text(source, newline="") as f:
            reader = csv.reader(f, **self.table_dialect(source, f))
            header = next(reader, None)
            if header is None:
                raise UserError(f"Input file {source} is empty: not even a header row naming the columns.")
            text_at = self.column_index(source, header, self.text_column, "--text-column")
            pair_at = (self.column_index(source, header, self.pair_column, self.pair_why)
                       if self.pair_column is not None else None)
            keep_at = [self.column_index(source, header, column, "--keep-column") for column in self.keep]
            for row in reader:
                if not row:
                    continue
                if max(text_at, pair_at or 0, *keep_at) >= len(row) or len(row) > len(header):
                    raise UserError(f"{source}, row {reader.line_num}: {len(row)} fields, but the header has "
                                    f"{len(header)}; fix the row (a missing separator, or a separator inside a "
                                    "text that is not quoted).")
                empty.check(row[text_at], reader.line_num)
                yield row[text_at], (row[pair_at] if pair_at is not None else None), tuple(row[i] for i in keep_at)
        empty.close()

    def table_dialect(self, source: str, f) -> dict:
        """`csv.reader` options as training reads the file with `data.quoting: auto`: a CSV's fields may be quoted;
        a TSV's quote marks are text (GLUE), unless its first lines show a CSV writer's quoting (pandas)."""
        if not source.lower().endswith(".tsv"):
            return {"delimiter": ","}
        from textxfer.data.tables import QUOTING_SAMPLE_CHARS, quoted_like_csv

        sample = f.read(QUOTING_SAMPLE_CHARS)
        f.seek(0)
        if quoted_like_csv(sample):
            self.say(f"{source}: tab-separated, with fields wrapped in double quotes and their inner quotes doubled, "
                     "as CSV writers quote: read as quoted, as training reads it")
            return {"delimiter": "\t"}
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}

    def column_index(self, source: str, header: list[str], column, why: str) -> int:
        key = str(column)
        if key in header:
            return header.index(key)
        if key.isdigit() and int(key) < len(header):  # a 0-based column number
            return int(key)
        fix = ("Name one of those." if why == "--keep-column" else
               f"Use {why if why.startswith('--') else '--text-column / --pair-column'}.")
        raise UserError(f"{source} has no column `{column}` ({why}); columns: {', '.join(header[:30])}. {fix}")

    def json_lines(self, source: str) -> Iterator[tuple[str, str | None, tuple]]:
        empty = _EmptyTexts(source, self.say if self.note_empty else None)
        with self.open_text(source) as f:
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
                text = text_value(row[self.text_column], source, number)
                empty.check(text, number)
                missing = [column for column in self.keep if column not in row]
                if missing:
                    raise UserError(f"{source}, line {number}: no key `{missing[0]}` to keep (--keep-column).")
                yield text, pair, tuple(row[column] for column in self.keep)
        empty.close()

    def parquet_rows(self, source: str) -> Iterator[tuple[str, str | None, tuple]]:
        import pyarrow.parquet as pq

        file = pq.ParquetFile(source)
        names = file.schema_arrow.names
        texts = [self.text_column] + ([str(self.pair_column)] if self.pair_column is not None else [])
        for column in [*texts, *self.keep]:
            if column not in names:
                how = "--keep-column" if column not in texts else "--text-column / --pair-column"
                raise UserError(f"{source} has no column `{column}`; columns: {', '.join(names[:30])}. Use {how}.")
        wanted = list(dict.fromkeys([*texts, *self.keep]))
        at = {column: wanted.index(column) for column in wanted}
        number = 0
        empty = _EmptyTexts(source, self.say if self.note_empty else None)
        for batch in file.iter_batches(batch_size=4096, columns=wanted):
            columns = [batch.column(c).to_pylist() for c in wanted]
            for i, value in enumerate(columns[0]):
                number += 1
                text = text_value(value, source, number)
                empty.check(text, number)
                pair = text_value(columns[1][i], source, number) if len(texts) > 1 else None
                yield text, pair, tuple(columns[at[column]][i] for column in self.keep)
        empty.close()


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
    """A text cell as a string: numbers are written out; null, lists, objects and true/false are refused (they are
    not texts, and their Python spelling would be predicted)."""
    if value is None:
        raise UserError(f"{source}, row {row}: the text is empty (null). Remove the row or give it a text.")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = "true/false" if isinstance(value, bool) else type(value).__name__
        raise UserError(f"{source}, row {row}: the text is a {kind} ({str(value)[:60]}), not a string. Give the "
                        "text as a string, or point --text-column at the column that holds it.")
    return str(value)


class _EmptyTexts:
    """Counts rows whose text is empty or only spaces: they are predicted (the output keeps one row per input
    row), but their labels say nothing about a text, so a note names how many and the first."""

    def __init__(self, source: str, say: Callable[[str], None] | None):
        self.source, self.say, self.count, self.first = source, say, 0, None

    def check(self, text: str, row: int) -> None:
        if not text.strip():
            self.count += 1
            self.first = self.first or row

    def close(self) -> None:
        if self.count and self.say is not None:
            self.say(f"{self.source}: {self.count:,} row(s) have an empty text (the first: row {self.first}); they "
                     "keep their place in the output, but their labels say nothing about a text")


class _StdinText:
    """stdin as text lines: UTF-8 (a BOM tolerated), a line that is not UTF-8 read as Latin-1 and said once."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.stream = getattr(sys.stdin, "buffer", None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __iter__(self) -> Iterator[str]:
        if self.stream is None:  # a text stream without bytes underneath (a test harness): as given
            yield from sys.stdin
            return
        warned = False
        for number, raw in enumerate(self.stream, 1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if not warned:
                    self.say(f"stdin, line {number}: byte 0x{raw[e.start]:02x} is not UTF-8; lines that are not "
                             "UTF-8 are read as Latin-1")
                    warned = True
                yield raw.decode("latin-1")
