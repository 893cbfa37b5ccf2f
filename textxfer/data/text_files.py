"""Plain-text sources with the label outside a table: `label<sep>text` lines (sms-spam, TREC) and one file or
folder per class (`{label: file}`, or a folder of class folders). Both become a fixed `text`/`label` `Table`
whose rows point back at the line or file they came from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.notes import note
from textxfer.data.tables import Table, decode_file, parse_separator, resolve_path

_TREC_PREFIX = re.compile(r"^\S+:\S+\s")


def read_prefix(path: Path, content: str, cfg: DataConfig, fmt: str, notes: list[str]) -> Table:
    """Lines `LABEL<sep>text` (sms-spam `ham\\t...`, TREC `DESC:manner How did ...`)."""
    lines = [(n, line) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
    sep = parse_separator(cfg.label_separator)
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
            note(notes, f"{path}: read as `label<{'tab' if sep == chr(9) else 'space'}>text` lines (sniffed); set "
                         "`data.format: prefix` and `data.label_separator` to be explicit.")
    labels, texts = [], []
    for _, line in lines:
        parts = line.strip().split(None, 1) if sep == " " else line.split(sep, 1)
        labels.append(parts[0].strip())
        texts.append(parts[1] if len(parts) > 1 else "")
    return Table({"label": labels, "text": texts}, str(path), names=["label", "text"], unit="line",
                 rows=[n for n, _ in lines], fixed=True)


def read_per_class(mapping: dict[str, Any], cfg: DataConfig, notes: list[str], source: str | None = None) -> Table:
    """{label: file with one example per line, or folder with one .txt file per example}."""
    texts, labels, files, rows = [], [], [], []
    kinds = set()
    for label, where in mapping.items():
        path = where if isinstance(where, Path) else resolve_path(str(where))
        if path.is_dir():
            found = sorted(p for p in path.glob("*.txt") if not p.name.startswith("."))
            if not found:
                raise UserError(f"Class folder {path} (label {label!r}) holds no .txt files. Add examples or "
                                "remove the folder.")
            for f in found:
                texts.append(decode_file(f, cfg, notes).strip())
                labels.append(label)
                files.append(str(f))
                rows.append(0)
            kinds.add("file")
        elif path.is_file():
            lines = [(n, line) for n, line in enumerate(decode_file(path, cfg, notes).splitlines(), 1)
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
