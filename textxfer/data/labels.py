"""Labels: fix the label order (`data.labels` as a list, mapping or file; a Hub dataset's class names; or the
sorted train values) and map every raw value to class ids. Raw values become string keys first (3, 3.0 and '3'
are one class; multi-label lists and delimited strings become atoms; `data.label_pattern`/`label_level` apply),
and values that do not fit are errors naming the file and row."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.notes import note
from textxfer.data.rows import FLOAT_TEXT, INTEGER_TEXT, SplitRows
from textxfer.data.tables import resolve_path

_INDEX_LIST = re.compile(r"^\s*\d+(\s*[,;|]\s*\d+)+\s*$")


def _read_label_spec(spec: Any) -> Any:
    """`data.labels` as given: a list, a mapping, or a file of names (JSON list/mapping, or one per line)."""
    if not isinstance(spec, str):
        return spec
    path = resolve_path(spec)
    if not path.is_file():
        raise UserError(f"`data.labels` is {spec!r}: give a list of label names, a mapping {{raw: name}}, or an "
                        "existing file with one name per line (or a JSON list).")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"`data.labels` file {path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:  # index labels count lines: a dropped blank line would shift every later index by one
        raise UserError(f"`data.labels` file {path}, line {lines.index('') + 1}: blank, between label names. Line i "
                        "names the label of index i - 1, so a blank line would shift every later one: remove it, "
                        "or write the name it stands for.")
    return lines


@dataclass
class LabelSpace:
    """The label order and how raw values map onto it."""

    names: list[str]
    mapping: dict[str, str] | None = None  # {raw: name} from a `data.labels` mapping
    index_mode: bool = False  # raw values are 0-based ids into `names` (GoEmotions index lists)
    declared: bool = False  # the names come from `data.labels` (or a Hub dataset), not from train

    def known(self) -> set[str]:
        return set(self.names) | set(self.mapping or ())


def _key(value: Any) -> str:
    """A raw label atom as a string key: 3, 3.0 and '3' are the same class."""
    if type(value) is str:
        return value.strip()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip()


def _atoms(value: Any, multi: bool, delimiter: str) -> list[Any]:
    """The label atoms of one row: one for single-label; several for multi-label lists/delimited strings."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if multi and isinstance(value, str):
        return [a.strip() for a in value.split(delimiter) if a.strip()]
    return [value]


def _label_transform(cfg: DataConfig):
    """`data.label_pattern` / `data.label_level` as a function on label strings (None: identity)."""
    if cfg.label_pattern and cfg.label_level != "full":
        raise UserError("Set either `data.label_pattern` or `data.label_level`, not both.")
    if cfg.label_level == "coarse":
        return lambda s: s.split(":", 1)[0]
    if not cfg.label_pattern:
        return None
    try:
        rx = re.compile(cfg.label_pattern)
    except re.error as e:
        raise UserError(f"`data.label_pattern` {cfg.label_pattern!r} is not a valid regular expression: {e}.") \
            from None

    def extract(s: str) -> str | None:
        m = rx.search(s)
        if m is None:
            return None
        if "label" in rx.groupindex:
            return m.group("label")
        return m.group(1) if rx.groups else m.group(0)

    return extract


def normalise_labels(rows: SplitRows, cfg: DataConfig, declared: set[str], notes: list[str]) -> list[list[str]]:
    """Raw label values -> lists of string keys; type errors (floats, mixed, lists) name the row."""
    normaliser = LabelNormaliser(cfg, declared)
    keys = normaliser.add(rows)
    normaliser.finish(rows.table.source, notes)
    return keys


class LabelNormaliser:
    """Raw label values -> lists of string keys, over one split read whole or in chunks (`add` per chunk, then
    `finish`). Type errors (floats, lists, objects) name the row at once; ids mixed with names are refused as
    soon as both have been seen, naming the first row of each.

    Work is done once per distinct scalar value (labels repeat): the first row holding a value is the one an
    error names, the same row a row-by-row pass would stop at."""

    def __init__(self, cfg: DataConfig, declared: set[str]):
        self.cfg, self.declared = cfg, declared
        self.transform = _label_transform(cfg)
        self.first: dict[str, tuple[str, str]] = {}  # kind ("id", "name") -> (where, key) of its first row
        self.floats = 0
        self.memo: dict[tuple[type, Any], list[str]] = {}
        self.col = f"`{cfg.label_column}`"

    def add(self, rows: SplitRows) -> list[list[str]]:
        cfg, declared, multi, transform = self.cfg, self.declared, self.cfg.multi_label, self.transform
        col = self.col = f"`{cfg.label_column}`" if not rows.table.fixed else "(the label)"

        def keys_of(i: int, value: Any) -> list[str]:
            if isinstance(value, dict):
                raise UserError(f"{rows.where(i)}: the label {col} is an object {str(value)[:60]!r}; give a class "
                                "name, an integer id, or (multi-label) a list.")
            if not multi and isinstance(value, (list, tuple, np.ndarray)):
                raise UserError(f"{rows.where(i)}: the label {col} is a list ({list(value)[:5]!r}). For several "
                                "labels per example set `data.multi_label: true`.")
            if not multi and isinstance(value, str) and _INDEX_LIST.match(value) and value.strip() not in declared:
                raise UserError(f"{rows.where(i)}: the label {value!r} looks like several labels. Set "
                                "`data.multi_label: true` (and `data.label_delimiter` if they are not separated by "
                                "`,`).")
            keys = []
            for atom in _atoms(value, multi, cfg.label_delimiter):
                if isinstance(atom, (float, np.floating)):
                    if not float(atom).is_integer():
                        _float_error(rows, i, col, atom)
                    self.floats += 1
                key = _key(atom)
                if isinstance(atom, str) and transform is not None and key not in declared:
                    new = transform(key)
                    if new is None:
                        raise UserError(f"{rows.where(i)}: `data.label_pattern` {cfg.label_pattern!r} does not "
                                        f"match the label {key!r}. Fix the pattern or the row.")
                    key = new.strip()
                if key not in declared:
                    if INTEGER_TEXT.match(key):
                        self.first.setdefault("id", (rows.where(i), key))
                    elif FLOAT_TEXT.match(key):
                        _float_error(rows, i, col, key)
                    else:
                        self.first.setdefault("name", (rows.where(i), key))
                keys.append(key)
            return keys

        memo = self.memo
        out: list[list[str]] = []
        for i, value in enumerate(rows.raw):
            if isinstance(value, (str, int, float, np.integer, np.floating)):
                tag = (type(value), value)
                keys = memo.get(tag)
                if keys is None:
                    keys = memo[tag] = keys_of(i, value)
                out.append(keys)
            else:
                out.append(keys_of(i, value))
        self._check_mixed(rows.table.source, col)
        return out

    def _check_mixed(self, source: str, col: str) -> None:
        if "id" in self.first and "name" in self.first and not self.declared:
            (a, va), (b, vb) = self.first["id"], self.first["name"]
            raise UserError(
                f"{source}: the label column {col} mixes integer ids and names ({va!r} at "
                f"{a.removeprefix(source + ', ')}, {vb!r} at {b.removeprefix(source + ', ')}). Use one kind "
                "throughout, or give `data.labels` a mapping from every raw value, ids and names alike, to its class "
                "(e.g. {0: negative, 1: positive, negative: negative, positive: positive})."
            )

    def finish(self, source: str, notes: list[str]) -> None:
        """The note about whole numbers stored as floats, once for the split."""
        if self.floats:
            note(notes, f"{source}: label column {self.col} holds whole numbers stored as floats (e.g. 1.0); "
                         "read as integer class ids.")


def _float_error(rows: SplitRows, i: int, col: str, value: Any) -> None:
    raise UserError(
        f"{rows.where(i)}: the label column {col} holds the non-integer number {value!r}. A classification label "
        "must be a class name or an integer id: if these are scores, bin them into classes first; if the column is "
        "the wrong one, set `data.label_column`."
    )


def label_sort_key(s: str):
    """Label names in the order classes get their ids: whole numbers by value first, then names A-Z."""
    return (0, int(s), "") if INTEGER_TEXT.match(s) else (1, 0, s)


def build_label_space(cfg: DataConfig, train: list[list[str]], class_names: list[str] | None,
                      all_keys: list[list[list[str]]], notes: list[str] | None = None) -> LabelSpace:
    """The label names and how raw values map to them: `data.labels` when given, else a dataset's class names,
    else the sorted values of train (with a note in `notes` when some differ only in case)."""
    spec = _read_label_spec(cfg.labels) if cfg.labels is not None else None
    if isinstance(spec, dict):
        mapping = {_key(k): str(v) for k, v in spec.items()}
        return LabelSpace(list(dict.fromkeys(mapping.values())), mapping=mapping, declared=True)
    if isinstance(spec, list):
        names = [str(x) for x in spec]
        declared = True
    elif spec is not None:
        raise UserError(f"`data.labels` must be a list of names, a mapping {{raw: name}} or a file; got {spec!r}.")
    elif class_names:
        names, declared = list(class_names), True
    else:
        names = sorted({k for keys in train for k in keys}, key=label_sort_key)
        declared = False
        if notes is not None:
            _note_case_variants(names, notes)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"`data.labels` names {', '.join(dupes)} more than once; each label must appear once.")
    index_mode = (declared and not all(INTEGER_TEXT.match(n) for n in names)
                  and all(INTEGER_TEXT.match(k) for split in all_keys for keys in split for k in keys))
    return LabelSpace(names, index_mode=index_mode, declared=declared)


def _note_case_variants(names: list[str], notes: list[str]) -> None:
    """Say when label values differ only in case (`Neg`, `neg`): they are separate classes, which is rarely meant."""
    from textxfer.data.notes import note

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), []).append(name)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(", ".join(repr(n) for n in group) for group in clashes[:5])
        first = clashes[0]
        mapping = ", ".join(f"{n}: {first[-1]}" for n in first)
        note(notes, f"labels that differ only in case are separate classes: {shown}. If they are one class, map "
                    f"them in `data.labels` (e.g. {{{mapping}}}, plus every other label).")


def encode_labels(keys: list[list[str]], rows: SplitRows, space: LabelSpace, split: str) -> list[list[int]]:
    """String keys -> class ids; unknown values and indices out of range name the row."""
    index = {n: i for i, n in enumerate(space.names)}
    out = []
    for i, row in enumerate(keys):
        ids = []
        for k in row:
            if space.mapping is not None:
                j = index.get(space.mapping.get(k, "\0"))
            elif space.index_mode:
                j = int(k)
                if not 0 <= j < len(space.names):
                    raise UserError(
                        f"{rows.where(i)}: label index {j} is out of range: `data.labels` has {len(space.names)} "
                        f"labels (ids 0..{len(space.names) - 1}). Fix the row, or give the full label list."
                    )
            else:
                j = index.get(k)
            if j is None:
                raise UserError(_unknown_label(k, rows.where(i), space, split))
            ids.append(j)
        out.append(ids)
    return out


def _unknown_label(key: str, where: str, space: LabelSpace, split: str) -> str:
    shown = ", ".join(space.names[:20]) + (f" ... ({len(space.names)} in all)" if len(space.names) > 20 else "")
    if space.mapping is not None:
        return (f"{where}: label {key!r} is not a key of the `data.labels` mapping (keys: "
                f"{', '.join(list(space.mapping)[:20])}). Add it to the mapping, or fix the row.")
    if not space.declared:
        return (f"{where}: label {key!r} does not occur in the training data (labels there: {shown}). Fix the "
                f"{split} row, or list every class in `data.labels`.")
    return f"{where}: label {key!r} is not one of the labels in `data.labels` ({shown}). Add it there, or fix the row."


def declared_labels(cfg: DataConfig) -> set[str]:
    """Label strings the recipe names itself (exempt from the missing/float/mixed heuristics)."""
    if cfg.labels is None:
        return set()
    spec = _read_label_spec(cfg.labels)
    if isinstance(spec, dict):
        return {_key(k) for k in spec} | {str(v) for v in spec.values()}
    return {str(x) for x in spec} if isinstance(spec, list) else set()
