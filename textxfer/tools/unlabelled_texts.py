"""`data.unlabelled`: the texts self-training may label, read with the training data's format and columns, and
cleaned of what must not be pseudo-labelled.

The file is read as `data.train` is (format, delimiter, encoding, `data.text_column` unless
`data.unlabelled_text_column` names its own, `data.text_pair_column`), with two differences: a label column is
not needed, and when one is there its values are ignored (said once); and a `text` file (`.txt`) is one text per
line. Then, in this order, rows without a text are dropped, repeated texts
are kept once, and texts that are also a training, validation or test text are removed: a pseudo-label on a test
text would leak the test set into training, and one on a training text would contradict its real label (equal
with case and runs of spaces ignored, `sampling.loose_key`: an uncased tokenizer reads such texts alike). Every
removal is counted in `UnlabelledTexts.counts` and said in the run's log and report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from textxfer.config.schema import DataConfig, Recipe
from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")


@dataclass
class UnlabelledTexts:
    """The usable unlabelled texts (and second texts of pairs), where they came from, and what was removed."""

    texts: list[str]
    pairs: list[str] | None
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    """rows_read, empty (no text), repeated (within the file), in_train, in_validation, in_test, kept."""
    notes: list[str] = field(default_factory=list)
    """What the user is told about the file (the label column being ignored, removals), each said once."""


def check_text_recipe(recipe: Recipe) -> None:
    """Unlabelled data is text: refuse it for an image recipe."""
    from textxfer.modalities.detect import task_of

    if task_of(recipe) != "text":
        raise UserError("`data.unlabelled` is for text classifiers: self-training labels texts. Remove it from this "
                        "image recipe.")


def read_unlabelled(value: Any, cfg: DataConfig) -> tuple[list[Any], list[Any] | None, str]:
    """(text cells, pair cells or None, source) of `data.unlabelled` as read, before any cleaning; a label column,
    if present, is reported as ignored."""
    from textxfer.data.rows import pick_column, read_table
    from textxfer.data.tables import decode_file, format_of, resolve_path

    if not isinstance(value, str):
        raise UserError(f"`data.unlabelled` is {value!r}: give one file (CSV, TSV, JSON Lines, Parquet, or a .txt "
                        "file with one text per line), a folder, or `hub:<dataset id>`.")
    notes: list[str] = []
    path = None if value.startswith("hub:") else resolve_path(value)
    if path is not None and path.is_file() and format_of(path, cfg) == "text":  # one text per line, no label
        content = decode_file(path, cfg, notes)
        lines = [line.strip() for line in content.splitlines()]
        if not any(lines):
            raise UserError(f"Data file {path} is empty (recipe key `data.unlabelled`). Point it at a file of texts.")
        return lines, None, str(path)
    table = read_table(value, cfg, "unlabelled", notes)  # its notes (a sniffed delimiter...) are logged as read
    own = cfg.unlabelled_text_column
    if own is not None:
        texts = pick_column(table, own, "unlabelled_text_column")
    else:
        try:
            texts = pick_column(table, cfg.text_column, "text_column")
        except UserError as e:
            raise UserError(f"{e} That key also names the training file's column: to name the unlabelled file's "
                            "alone, set `data.unlabelled_text_column`.") from None
    pairs = pick_column(table, cfg.text_pair_column, "text_pair_column") if cfg.text_pair_column is not None else None
    for values, key in ((texts, own if own is not None else cfg.text_column), (pairs, cfg.text_pair_column)):
        bad = next(((i, v) for i, v in enumerate(values or []) if not _empty(v) and not isinstance(v, str)), None)
        if bad is not None:
            raise UserError(f"{table.where(bad[0])}: the text column `{key}` of `data.unlabelled` holds "
                            f"{type(bad[1]).__name__} {repr(bad[1])[:60]}, not text. Columns: "
                            f"{', '.join(map(str, table.names))}.")
    label = cfg.label_column
    if table.fixed or label in table.columns or (isinstance(label, int) and not table.header and label in table.columns):
        log.warning(f"{table.source}: `data.unlabelled` has a label column (`{label}`); its values are ignored: "
                    "self-training labels these texts itself.")
    return texts, pairs, table.source


def clean_unlabelled(texts: list[Any], pairs: list[Any] | None, source: str,
                     taken: dict[str, set[str]]) -> UnlabelledTexts:
    """Drop empty rows, repeats and texts that are also in `taken` ({split: text keys}: train, validation, test;
    compared by `loose_key`), counting each; a UserError naming the file when nothing is left."""
    from textxfer.data.sampling import loose_key, text_key

    taken = {split: {loose_key(k) for k in keys} for split, keys in taken.items()}
    counts = {"rows_read": len(texts), "empty": 0, "repeated": 0}
    counts.update({f"in_{split}": 0 for split in taken})
    seen: set[str] = set()
    keep_t: list[str] = []
    keep_p: list[str] | None = [] if pairs is not None else None
    for i, raw in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        if _empty(raw) or (pairs is not None and _empty(pair)):
            counts["empty"] += 1
            continue
        text = raw.strip()
        pair = pair.strip() if pair is not None else None
        key = text_key(text, pair)
        if key in seen:
            counts["repeated"] += 1
            continue
        seen.add(key)
        loose = loose_key(key)
        clash = next((split for split, keys in taken.items() if loose in keys), None)
        if clash is not None:
            counts[f"in_{clash}"] += 1
            continue
        keep_t.append(text)
        if keep_p is not None:
            keep_p.append(pair)
    counts["kept"] = len(keep_t)
    removed = {k: v for k, v in counts.items() if k not in ("rows_read", "kept") and v}
    notes = []
    if removed:
        said = {"empty": "without a text", "repeated": "repeated in the file"}
        parts = [f"{n:,} {said.get(k) or 'equal to a ' + k.removeprefix('in_') + ' text'}" for k, n in removed.items()]
        notes.append(f"{source}: removed {', '.join(parts)} (a labelled or test text is never pseudo-labelled: "
                     f"no leakage); {len(keep_t):,} of {counts['rows_read']:,} unlabelled texts kept.")
    for n in notes:
        log.warning(n)
    if not keep_t:
        raise UserError(f"{source} (`data.unlabelled`): no unlabelled text is left ({counts['rows_read']:,} rows read; "
                        f"{', '.join(f'{k}: {v}' for k, v in removed.items()) or 'none usable'}). Give texts that "
                        "are not already training, validation or test texts.")
    return UnlabelledTexts(keep_t, keep_p, source, counts, notes)


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()

