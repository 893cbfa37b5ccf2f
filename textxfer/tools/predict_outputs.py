"""Where predictions go, a chunk at a time: JSONL, CSV/TSV or Parquet files (or JSONL on stdout).

A file is written as `OUT.partial` and renamed to OUT only when every row is in, so a killed prediction never
leaves an output that looks complete. `size()` after each chunk is what a resumed prediction cuts the partial file
back to (anything written after the last recorded chunk is dropped and predicted again). Parquet cannot be
appended to once its writer is gone, so its chunks are separate files in the `OUT.partial` folder, joined into
OUT at the end."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

from textxfer.core.errors import UserError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: str) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"--output {path}: give a .jsonl, .csv, .tsv or .parquet file.")
    return fmt


PREDICTED = ("text_pair", "label", "score", "labels", "scores")
"""The output's own columns besides the input's (`key`): a kept input column of one of these names is renamed."""


def kept_names(keep: tuple[str, ...] | list[str], key: str) -> list[str]:
    """The output names of the kept input columns (`--keep-column`): as in the input, or `input_<name>` where the
    output has a column of that name (a gold `label` column is kept beside the predicted one)."""
    return [f"input_{name}" if name in (key, *PREDICTED) else name for name in keep]


def prediction_rows(items: list[str], results: list[list[dict]], pairs: list[str] | None, key: str,
                    kept: list[tuple] | None = None, names: list[str] | None = None) -> list[dict]:
    """One output row per input: the kept input columns (`names`, values `kept`), the input, the top label and
    score, and every chosen label with its score."""
    return [{**(dict(zip(names, kept[i], strict=True)) if kept is not None and names else {}), key: item,
             **({"text_pair": pairs[i]} if pairs is not None else {}),
             "label": r[0]["label"] if r else None, "score": r[0]["score"] if r else None,
             "labels": [x["label"] for x in r], "scores": [round(x["score"], 6) for x in r]}
            for i, (item, r) in enumerate(zip(items, results, strict=True))]


def as_cell(value) -> str | None:
    """A kept value in a CSV or Parquet output, whose kept columns hold text: numbers written out, lists and
    objects as JSON, null as null (an empty CSV cell)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, default=str)


class Writer:
    """Appends chunks of prediction rows to the partial output; `finish()` renames it to the output."""

    def __init__(self, output: str | None, key: str, with_pairs: bool, resume_size: int | None = None,
                 kept: list[str] | None = None):
        self.output = Path(output) if output else None
        self.key, self.with_pairs = key, with_pairs
        self.kept = list(kept or [])
        """Output names of the kept input columns, first in every row (JSON values in JSONL, text elsewhere)."""
        self.format = output_format(output) if output else "jsonl"
        self.partial = self.partial_path(output)
        self.parts = 0
        if self.output is None:
            self.stream = sys.stdout
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            if resume_size is None:
                shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(exist_ok=True)
            self.parts = resume_size or 0
            for stale in self.partial.glob("part-*.parquet"):  # written after the last recorded chunk
                if int(stale.stem.split("-")[1]) >= self.parts:
                    stale.unlink()
            return
        if resume_size is None and self.partial.exists():
            self.partial.unlink()
        self.stream = open(self.partial, "ab")
        self.stream.truncate(resume_size or 0)
        self.stream.seek(resume_size or 0)
        if not resume_size and self.format in ("csv", "tsv"):
            self.stream.write(self.csv_text([self.columns()]))

    @staticmethod
    def partial_path(output: str | None) -> Path | None:
        """Where the output is written until every row is in."""
        return Path(output).with_name(Path(output).name + ".partial") if output else None

    def columns(self) -> list[str]:
        return [*self.kept, self.key, *(["text_pair"] if self.with_pairs else []), "label", "score", "labels",
                "scores"]

    def csv_text(self, rows: list[list]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter="\t" if self.format == "tsv" else ",", lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def write(self, rows: list[dict]) -> None:
        if self.output is None:
            self.stream.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
            self.stream.flush()
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            part = self.partial / f"part-{self.parts:08d}.parquet"
            tmp = part.with_suffix(".tmp")
            rows = [{**r, **{name: as_cell(r[name]) for name in self.kept}} for r in rows] if self.kept else rows
            pq.write_table(pa.Table.from_pylist(rows, schema=self.schema()), tmp)
            os.replace(tmp, part)
            self.parts += 1
        elif self.format == "jsonl":
            self.stream.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8"))
        else:
            self.stream.write(self.csv_text([[*(as_cell(r[name]) for name in self.kept), r[self.key],
                                              *([r["text_pair"]] if self.with_pairs else []),
                                              r["label"], r["score"], "|".join(r["labels"]),
                                              "|".join(map(str, r["scores"]))] for r in rows]))

    def schema(self):
        import pyarrow as pa

        fields = [(name, pa.string()) for name in self.kept] + [(self.key, pa.string())] + (
            [("text_pair", pa.string())] if self.with_pairs else []) + [
            ("label", pa.string()), ("score", pa.float64()), ("labels", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64()))]
        return pa.schema(fields)

    def size(self) -> int:
        """What a resumed run keeps: bytes of the partial file (flushed to disk), or Parquet parts written."""
        if self.output is None:
            return 0
        if self.format == "parquet":
            return self.parts
        self.stream.flush()
        os.fsync(self.stream.fileno())
        return self.stream.tell()

    def finish(self) -> None:
        """Every row is in: the partial output becomes the output."""
        if self.output is None:
            return
        if self.format != "parquet":
            self.stream.close()
            os.replace(self.partial, self.output)
            return
        import pyarrow.parquet as pq

        tmp = self.output.with_name(f".{self.output.name}.tmp{os.getpid()}")
        with pq.ParquetWriter(tmp, self.schema()) as joined:
            for i in range(self.parts):
                joined.write_table(pq.read_table(self.partial / f"part-{i:08d}.parquet", schema=self.schema()))
        os.replace(tmp, self.output)
        shutil.rmtree(self.partial, ignore_errors=True)

    def discard(self) -> None:
        """Remove the partial output (nothing in it worth resuming)."""
        if self.output is None or self.partial is None:
            return
        if self.format == "parquet":
            shutil.rmtree(self.partial, ignore_errors=True)
        else:
            self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop without finishing (an error): the partial output stays for a resume."""
        if self.output is not None and self.format != "parquet" and not self.stream.closed:
            self.stream.close()
