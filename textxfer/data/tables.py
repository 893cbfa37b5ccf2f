"""Table files as read: `Table`, the one form every reader yields, and the readers of CSV/TSV, JSON/JSON Lines
and Parquet files, with encoding fallback, delimiter sniffing, header detection and the hint given when a file
was read with another delimiter than it uses. Picking columns out of a `Table` is `rows.py`'s job."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.notes import note

SUFFIX_FORMATS = {"csv": "csv", "tsv": "tsv", "tab": "tsv", "json": "json", "jsonl": "jsonl", "ndjson": "jsonl",
                  "parquet": "parquet", "pq": "parquet", "txt": "text"}


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


def resolve_path(value: str) -> Path:
    """A recipe path: `package:<path>` inside the installed package, otherwise the path with `~` expanded."""
    if value.startswith("package:"):
        from textxfer.backbones.load import resolve_package_path

        return resolve_package_path(value)
    return Path(value).expanduser()


def format_of(path: Path, cfg: DataConfig) -> str:
    """`data.format`, or under `auto` the format the file's extension names (unknown extension: UserError)."""
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


def text_codec(path: Path, head: bytes, cfg: DataConfig) -> str:
    """The codec a text file is read with (`data.encoding`, normalised), after checking from its first bytes
    that it is text at all."""
    if b"\x00" in head[:8192]:
        raise UserError(f"Data file {path} is binary, not text (format {cfg.format}). Export it as CSV/TSV/JSON "
                        "Lines, or set `data.format: parquet` if it is a Parquet file.")
    try:
        return codecs.lookup(cfg.encoding).name
    except LookupError:
        raise UserError(f"`data.encoding` is {cfg.encoding!r}, which Python does not know. Use e.g. utf-8, "
                        "latin-1, cp1252 or utf-16.") from None


def undecodable(path: Path, byte: int, line: int, codec: str, cfg: DataConfig, notes: list[str]) -> str:
    """A byte that does not decode: under UTF-8 the file is read as Latin-1 (said, with the line); under a
    recipe's own encoding it is an error naming the line. Returns the codec to read with."""
    if codec != "utf-8":
        raise UserError(f"{path}, line {line}: byte 0x{byte:02x} is not valid {cfg.encoding}. Set "
                        "`data.encoding` to the file's real encoding (utf-8, latin-1, cp1252...).")
    note(notes, f"{path} is not valid UTF-8 (byte 0x{byte:02x} on line {line}); read it as "
                 "Latin-1. Set `data.encoding: latin-1` to say so, or re-save the file as UTF-8.")
    return "latin-1"


def decode_file(path: Path, cfg: DataConfig, notes: list[str]) -> str:
    """The file's text: UTF-8 (BOM tolerated) with a reported Latin-1 fallback, or the recipe's encoding."""
    raw = path.read_bytes()
    codec = text_codec(path, raw, cfg)
    try:
        return raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return raw.decode(undecodable(path, raw[e.start], line, codec, cfg, notes))


def parse_separator(value: str | None) -> str | None:
    """Recipe spellings of a separator: `\\t`/`tab` is a tab, `space` a space."""
    if value is None:
        return None
    return {"\\t": "\t", "tab": "\t", "space": " "}.get(value, value)


def sniff_delimiter(content: str, path: Path, notes: list[str]) -> str:
    """`,` unless every sampled line has the same (non-zero) count of exactly one other candidate."""
    sample = [line for line in content.splitlines()[:50] if line.strip()]
    consistent = [d for d in (",", "\t", ";", "|")
                  if len({line.count(d) for line in sample}) == 1 and sample[0].count(d) > 0]
    if "," in consistent or len(consistent) != 1:
        return ","
    note(notes, f"{path}: delimiter sniffed as {consistent[0]!r} (set `data.delimiter` to be explicit).")
    return consistent[0]


def read_delimited(path: Path, content: str, cfg: DataConfig, fmt: str, notes: list[str]) -> Table:
    """A CSV/TSV file's text -> a `Table` of string cells, named by its header row or numbered without one."""
    import io

    import pandas as pd

    sep = parse_separator(cfg.delimiter) or ("\t" if fmt == "tsv" else sniff_delimiter(content, path, notes))
    quoting, options = csv_options(cfg, sep, content, path, notes)
    try:
        frame = pd.read_csv(io.StringIO(content), **options)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as e:
        raise csv_error(path, fmt, sep, quoting, e) from None
    cells = [frame[c].tolist() for c in frame.columns]
    hint = delimiter_hint(content, sep, cfg, fmt, path) if len(cells) == 1 else ""
    header = has_header(cells, cfg, path, notes)
    if not header:
        return Table({i: col for i, col in enumerate(cells)}, str(path), names=list(range(len(cells))),
                     header=False, hint=hint)
    names = header_names(cells)
    if len(cells[0]) < 2:
        raise UserError(f"Data file {path} has a header ({', '.join(names)}) but no rows. Add examples to it, or "
                        "set `data.header: false` if that line is an example.")
    return Table({n: c[1:] for n, c in zip(names, cells, strict=True)}, str(path), names=names, hint=hint)


def csv_options(cfg: DataConfig, sep: str, sample: str = "", path: Path | None = None,
                notes: list[str] | None = None) -> tuple[str, dict]:
    """(quoting, `pandas.read_csv` options) of a delimited file: every cell a string, as written. `sample`: the
    file's first lines, from which `quoting: auto` tells a tab-separated file that a CSV writer quoted."""
    import csv

    quoting = cfg.quoting
    if quoting == "auto":
        quoting = "quotes" if sep != "\t" or quoted_like_csv(sample) else "none"
        if sep == "\t" and quoting == "quotes" and notes is not None:
            note(notes, f"{path}: tab-separated, with fields wrapped in double quotes and their inner quotes doubled "
                        '(`"say ""hi"""`), as CSV writers such as pandas quote: read with `quoting: quotes`. Set '
                        "`data.quoting: none` if the quote marks are part of the texts.")
    return quoting, dict(sep=sep, header=None, dtype=str, keep_default_na=False, skip_blank_lines=True,
                         quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
                         engine="c" if len(sep) == 1 else "python")


_CSV_QUOTED_FIELD = re.compile(r'(?:^|\t)"((?:[^"]|"")*)"(?=\t|\r?$)', re.M)
"""A tab-separated field wrapped in double quotes, any quote inside it doubled (it may span lines)."""


def quoted_like_csv(sample: str) -> bool:
    """Whether a tab-separated sample was written with CSV quoting: some quoted field holds a doubled quote, a tab or
    a line break, which only a CSV writer's quoting explains (plain text rarely both starts and ends that way)."""
    return any('""' in m[1] or "\t" in m[1] or "\n" in m[1]
               for m in _CSV_QUOTED_FIELD.finditer(sample[:QUOTING_SAMPLE_CHARS]))


QUOTING_SAMPLE_CHARS = 1 << 16
"""How much of a file `quoted_like_csv` reads: as much as the chunked reader samples (streaming._SAMPLE_BYTES), so
training and `predict` decide alike."""


def csv_error(path: Path, fmt: str, sep: str, quoting: str, e: Exception) -> UserError:
    """What pandas' error reading a delimited file means (its last line names the line that broke)."""
    import pandas as pd

    if isinstance(e, pd.errors.EmptyDataError):
        return UserError(f"Data file {path} is empty. Point the recipe at a file with examples.")
    return UserError(
        f"{path} could not be read as {fmt} with delimiter {sep!r} and quoting `{quoting}`: "
        f"{str(e).strip().splitlines()[-1]}. Check `data.delimiter` and `data.quoting` (a field that contains "
        "the delimiter must be quoted; `quoting: none` when quote marks are part of the text)."
    )


def header_names(cells: list[list]) -> list[Any]:
    """Column names from the first row of each column (repeated names numbered, empty ones by position)."""
    names: list[Any] = []
    for c in cells:
        name = str(c[0]).strip() if isinstance(c[0], str) else str(len(names))
        names.append(name if name not in names else f"{name}.{names.count(name)}")
    return names


_DELIMITER_NAMES = {",": "comma-separated", "\t": "tab-separated", ";": "semicolon-separated", "|": "pipe-separated"}


def delimiter_hint(content: str, sep: str, cfg: DataConfig, fmt: str, path: Path) -> str:
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


def has_header(cells: list[list], cfg: DataConfig, path: Path, notes: list[str]) -> bool:
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
    note(notes, f"{path}: first row taken as a header ({', '.join(str(c[0]) for c in cells)}); set "
                 "`data.header` to be explicit.")
    return True


def json_line(path: Path, n: int, line: str) -> Any:
    """One line of a JSON Lines file, parsed; an error names the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno}). Fix the line, or set "
                        "`data.format` if the file is not JSON Lines.") from None


def read_json(path: Path, content: str, lines: bool) -> Table:
    """JSON Lines records, or a JSON list of records / object of columns / object holding one list of records."""
    records: list = []
    rows: list[int] = []
    if lines:
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            records.append(json_line(path, n, line))
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
    return records_table(path, records, rows, "line" if lines else "record")


def records_table(path: Path, records: list, rows: list[int], unit: str, names: dict | None = None) -> Table:
    """JSON records (objects) -> a `Table` of their keys (a record without a key holds None there); `names`:
    the keys seen before (in earlier chunks of the file), kept first and updated."""
    names = {} if names is None else names
    for r, n in zip(records, rows, strict=True):
        if not isinstance(r, dict):
            raise UserError(f"{path}, {unit} {n}: expected an object like "
                            f"{{\"text\": ..., \"label\": ...}}, found {type(r).__name__} {str(r)[:60]!r}.")
        names.update(dict.fromkeys(r))
    columns = {k: [r.get(k) for r in records] for k in names}
    return Table(columns, str(path), names=list(names), unit=unit, rows=rows)


def read_parquet(path: Path) -> Table:
    """A Parquet file's columns as Python lists."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"Could not read {path} as Parquet: {str(e).splitlines()[0]}. Check `data.format`.") \
            from None
    if table.num_rows == 0:
        raise UserError(f"Data file {path} has columns ({', '.join(table.column_names)}) but no rows.")
    return Table(table.to_pydict(), str(path), names=list(table.column_names))
