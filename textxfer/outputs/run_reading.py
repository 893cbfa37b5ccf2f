"""A finished (or interrupted) run directory, read leniently for the report and the console summary.

Only the files of the run directory contract are read (run.json, metrics.json, history.json, recipe.yaml,
predictions/*.jsonl). Nothing here raises for a missing or damaged file: each problem is recorded in
`RunFiles.problems` so the report can name it, because a report is most useful exactly when a run went wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from textxfer.core.errors import UserError
from textxfer.outputs import plots

SPLITS = ("validation", "test")


@dataclass
class Example:
    """One prediction row of a split, labels normalised to names (tuples of names for multi-label)."""

    split: str
    text: str
    label: str | tuple[str, ...]
    pred: str | tuple[str, ...]
    confidence: float

    @property
    def wrong(self) -> bool:
        if isinstance(self.label, tuple):
            return set(self.label) != set(self.pred)
        return self.label != self.pred


@dataclass
class RunFiles:
    """The parsed contract files of one run directory; None where a file is missing or unreadable."""

    root: Path
    run: dict | None
    metrics: dict | None
    history: dict | None
    recipe_text: str | None
    examples: dict[str, list[Example]]
    labels: list[str]
    multi_label: bool
    task: str
    problems: list[str] = field(default_factory=list)

    def unreadable(self, name: str) -> bool:
        """Whether the file `name` (e.g. `metrics.json`) is there but could not be read (`problems` says why)."""
        return any(p.startswith(f"{name} could not be read") for p in self.problems)

    @property
    def train_records(self) -> list[dict]:
        return [r for r in (self.history or {}).get("train") or [] if isinstance(r, dict)]

    @property
    def eval_records(self) -> list[dict]:
        """Validation evaluations in order, with any `eval_` key prefix removed."""
        out = []
        for r in (self.history or {}).get("eval") or []:
            if isinstance(r, dict) and r.get("split", "validation") == "validation":
                out.append({k.removeprefix("eval_"): v for k, v in r.items()})
        return out

    @property
    def primary_split(self) -> str | None:
        """The split the confusion matrix and per-class table show: test if it has predictions, else validation."""
        for split in ("test", "validation"):
            if self.examples.get(split):
                return split
        return None


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} could not be read ({exc}); it is ignored")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object; it is ignored")
        return None
    return data


HISTORY_SHAPES = {"train": list, "eval": list, "self_training": dict, "contrastive": list}
"""What history.json's sections are (`RunState.history`); a section of another type is left out, said once."""


def _history_shaped(history: dict | None, problems: list[str]) -> dict | None:
    """history.json without the sections that do not have their shape (an edited or damaged file), each said."""
    if history is None:
        return None
    for key, kind in HISTORY_SHAPES.items():
        if key in history and not isinstance(history[key], kind):
            found = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
                     dict: "a mapping", type(None): "null"}.get(type(history[key]), "another value")
            problems.append(f"history.json: `{key}` is {found} where a run writes a "
                            f"{'list' if kind is list else 'mapping'}; it is ignored")
            history = {k: v for k, v in history.items() if k != key}
    return history


def _as_name(value, labels: Sequence[str]) -> str:
    """A label as its name: ints index the label list (older rows may hold ids)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return labels[value]
    return str(value)


def _read_predictions(path: Path, split: str, labels: Sequence[str], multi: bool | None,
                      problems: list[str]) -> list[Example]:
    out: list[Example] = []
    bad = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        problems.append(f"predictions/{path.name} could not be read ({exc}); it is ignored")
        return out
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label, pred = row["label"], row["pred"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if label is None:  # an unlabelled row cannot be right or wrong
            continue
        is_multi = multi if multi is not None else isinstance(label, list)
        if is_multi:
            label = tuple(_as_name(v, labels) for v in (label if isinstance(label, list) else [label]))
            pred = tuple(_as_name(v, labels) for v in (pred if isinstance(pred, list) else [pred]))
        else:
            label, pred = _as_name(label, labels), _as_name(pred, labels)
        confidence = row.get("confidence")
        if not plots.is_number(confidence):
            probs = row.get("probs")
            confidence = max(probs) if isinstance(probs, list) and probs else float("nan")
        text = row.get("text", row.get("image", ""))
        out.append(Example(split, str(text), label, pred, float(confidence)))
    if bad:
        problems.append(f"predictions/{path.name}: {bad} line(s) were not JSON rows with 'label' and 'pred'; skipped")
    return out


def load_run(run_dir: str | Path) -> RunFiles:
    """Parse a run directory; UserError when it is not one (no run.json and no recipe.yaml)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory. Pass the output directory of `textxfer train` "
                        "(the folder that holds run.json and recipe.yaml).")
    if not (root / "run.json").is_file() and not (root / "recipe.yaml").is_file():
        raise UserError(f"{root} is not a textxfer run directory: it has neither run.json nor recipe.yaml. "
                        "Pass the output directory of `textxfer train` (its `output_dir`).")
    problems: list[str] = []
    run = _read_json(root / "run.json", problems)
    metrics = _read_json(root / "metrics.json", problems)
    history = _history_shaped(_read_json(root / "history.json", problems), problems)
    recipe_text = None
    if (root / "recipe.yaml").is_file():
        try:
            recipe_text = (root / "recipe.yaml").read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"recipe.yaml could not be read ({exc})")

    labels = [str(v) for v in (run or {}).get("labels") or []]
    if not labels:
        per_class = (metrics or {}).get("per_class") or {}
        for split in SPLITS:
            if isinstance(per_class.get(split), dict):
                labels = [str(k) for k in per_class[split]]
                break
    multi = (run or {}).get("multi_label")
    if not isinstance(multi, bool):
        multi = None if not (metrics or {}).get("thresholds") else True
    examples = {}
    for split in SPLITS:
        path = root / "predictions" / f"{split}.jsonl"
        if path.is_file():
            examples[split] = _read_predictions(path, split, labels, multi, problems)
    if multi is None:
        multi = any(isinstance(e.label, tuple) for rows in examples.values() for e in rows)
    # names seen in predictions but not in the label list still get a row and a column
    seen: set[str] = set()
    for rows in examples.values():
        for e in rows:
            seen.update(e.label if isinstance(e.label, tuple) else [e.label])
            seen.update(e.pred if isinstance(e.pred, tuple) else [e.pred])
    labels += sorted(seen - set(labels))
    task = str((run or {}).get("task") or "text")
    return RunFiles(root, run, metrics, history, recipe_text, examples, labels, multi, task, problems)
