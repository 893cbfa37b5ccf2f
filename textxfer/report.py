"""What a run leaves for people to look at: plots, errors.csv, per_class.csv, report.html, the console summary.

Everything here reads only the files of the run directory contract (run.json, recipe.yaml, metrics.json,
history.json, predictions/*.jsonl), so a report can be (re)written for any run, on any machine, long after
training, and a failure here can never touch the saved model. Missing pieces are skipped and named.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import re
import shlex
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import yaml

from textxfer import plots
from textxfer.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("validation", "test")
TOP_MISTAKES = 50
TOP_PAIRS = 20
MULTI_SEP = "|"  # joins label sets of multi-label runs in errors.csv
ERROR_COLUMNS = ["split", "text", "label", "pred", "confidence"]
PER_CLASS_COLUMNS = ["split", "label", "precision", "recall", "f1", "support"]
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")


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


@dataclass
class Report:
    """What `build_report` did: the page, what is missing or failed (also shown in the page), files written."""

    path: Path
    warnings: list[str]
    written: list[Path]


# ---------------------------------------------------------------- loading


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
    history = _read_json(root / "history.json", problems)
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


# ---------------------------------------------------------------- numbers from predictions


def confusion_counts(examples: Sequence[Example], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(counts, support): counts[t, p] over label indices and support[t] = examples whose true label is t.

    Single-label: counts[t, p] = examples with true t predicted p (rows sum to support).
    Multi-label: counts[t, t] = examples carrying t for which t was predicted; counts[t, p] (p != t) =
    examples carrying t for which p was predicted although p is not one of their true labels.
    """
    index = {name: i for i, name in enumerate(labels)}
    n = len(labels)
    counts = np.zeros((n, n), dtype=np.int64)
    support = np.zeros(n, dtype=np.int64)
    for e in examples:
        true = e.label if isinstance(e.label, tuple) else (e.label,)
        pred = e.pred if isinstance(e.pred, tuple) else (e.pred,)
        for t in true:
            support[index[t]] += 1
            for p in pred:
                if p == t or p not in true:
                    counts[index[t], index[p]] += 1
    return counts, support


def per_class_from_predictions(examples: Sequence[Example], labels: Sequence[str]) -> dict[str, dict]:
    """precision/recall/F1/support per label (zero where undefined, as scikit-learn's zero_division=0)."""
    tp = dict.fromkeys(labels, 0)
    fp = dict.fromkeys(labels, 0)
    fn = dict.fromkeys(labels, 0)
    for e in examples:
        true = set(e.label) if isinstance(e.label, tuple) else {e.label}
        pred = set(e.pred) if isinstance(e.pred, tuple) else {e.pred}
        for name in true & pred:
            tp[name] += 1
        for name in pred - true:
            fp[name] += 1
        for name in true - pred:
            fn[name] += 1
    out = {}
    for name in labels:
        p = tp[name] / (tp[name] + fp[name]) if tp[name] + fp[name] else 0.0
        r = tp[name] / (tp[name] + fn[name]) if tp[name] + fn[name] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": p, "recall": r, "f1": f, "support": tp[name] + fn[name]}
    return out


def per_class(run: RunFiles) -> dict[str, dict[str, dict]]:
    """Per split: label -> scores, from metrics.json where the trainer wrote them, else from the predictions."""
    out: dict[str, dict[str, dict]] = {}
    stored = (run.metrics or {}).get("per_class") or {}
    for split in SPLITS:
        table = stored.get(split)
        if isinstance(table, dict) and table:
            rows = {}
            for name, scores in table.items():
                if isinstance(scores, dict):
                    rows[str(name)] = {
                        "precision": scores.get("precision"),
                        "recall": scores.get("recall"),
                        "f1": scores.get("f1", scores.get("f1-score")),
                        "support": scores.get("support"),
                    }
            out[split] = rows
        elif run.examples.get(split):
            out[split] = per_class_from_predictions(run.examples[split], run.labels)
    return out


def mistakes(run: RunFiles) -> list[Example]:
    """Wrong validation and test examples, most confident first (confident mistakes are often label noise)."""
    wrong = [e for split in SPLITS for e in run.examples.get(split, []) if e.wrong]
    return sorted(wrong, key=lambda e: -e.confidence if math.isfinite(e.confidence) else math.inf)


def thresholds(run: RunFiles) -> list[float] | None:
    value = (run.metrics or {}).get("thresholds")
    if plots.is_number(value):
        return [float(value)] * len(run.labels)
    if isinstance(value, list) and len(value) == len(run.labels) and all(plots.is_number(v) for v in value):
        return [float(v) for v in value]
    return None


# ---------------------------------------------------------------- files


def _cell(value: str | tuple[str, ...]) -> str:
    return MULTI_SEP.join(value) if isinstance(value, tuple) else value


def write_errors_csv(run: RunFiles, path: Path) -> Path:
    """errors.csv: split, text (image path for image runs), label, pred, confidence; most confident first."""
    columns = list(ERROR_COLUMNS)
    if run.task == "image":
        columns[1] = "image"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for e in mistakes(run):
            writer.writerow([e.split, e.text, _cell(e.label), _cell(e.pred), f"{e.confidence:.6f}"])
    return path


def write_per_class_csv(table: dict[str, dict[str, dict]], labels: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PER_CLASS_COLUMNS)
        for split in SPLITS:
            rows = table.get(split) or {}
            for name in [*labels, *sorted(set(rows) - set(labels))]:
                if name in rows:
                    s = rows[name]
                    writer.writerow([split, name, *(_csv_num(s.get(k)) for k in ("precision", "recall", "f1")),
                                     _csv_num(s.get("support"))])
    return path


def _csv_num(value) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)


def write_confusion_csv(labels: Sequence[str], counts: np.ndarray, split: str, path: Path) -> Path:
    """The counts behind confusion.png (rows true, columns predicted), for anyone who wants the numbers."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"{split}: true \\ predicted", *labels])
        for name, row in zip(labels, counts, strict=True):
            writer.writerow([name, *(int(v) for v in row)])
    return path


def _artifacts(run: RunFiles) -> tuple[list[Path], list[str]]:
    """Write every artifact that the files allow; (written paths, notes on what was skipped or failed)."""
    written: list[Path] = []
    notes: list[str] = []
    plot_dir = run.root / "plots"

    def attempt(name: str, make) -> None:
        try:
            result = make()
        except Exception as exc:  # a plot must never cost the run; say what failed and go on
            log.warning("could not write %s: %r", name, exc, exc_info=True)
            notes.append(f"{name} could not be written: {exc!r}")
            return
        if result is not None:
            written.append(result)

    evals = run.eval_records
    best_metric = (run.metrics or {}).get("best_metric")
    best = (run.metrics or {}).get("best") if isinstance((run.metrics or {}).get("best"), dict) else None
    if run.train_records or evals:
        attempt("plots/loss.png", lambda: plots.plot_loss(run.train_records, evals, plot_dir / "loss.png"))
    if evals:
        attempt("plots/metrics.png",
                lambda: plots.plot_metrics(evals, best_metric, best, plot_dir / "metrics.png"))

    split = run.primary_split
    if split is not None and run.labels:
        shown = run.examples[split]

        def confusion() -> Path | None:
            counts, support = confusion_counts(shown, run.labels)
            write_confusion_csv(run.labels, counts, split, _mkdir(plot_dir) / "confusion.csv")
            title = f"Confusion matrix, {split} split ({len(shown):,} examples)"
            if run.multi_label:
                return plots.plot_confusion_multilabel(
                    run.labels, counts, support, plot_dir / "confusion.png",
                    title + "\ndiagonal: recall of the label; off-diagonal: the column label predicted "
                    "although it is not a true label")
            return plots.plot_confusion(run.labels, counts, plot_dir / "confusion.png",
                                        title + "\nrows normalised: the diagonal is each class's recall")

        attempt("plots/confusion.png", confusion)
        attempt("errors.csv", lambda: write_errors_csv(run, run.root / "errors.csv"))

    table = per_class(run)
    if table:
        attempt("per_class.csv", lambda: write_per_class_csv(table, run.labels, run.root / "per_class.csv"))
    if run.multi_label and table:
        def f1_plot() -> Path | None:
            f1 = {s: [(rows.get(name) or {}).get("f1") for name in run.labels] for s, rows in table.items()}
            primary = "test" if "test" in table else next(iter(table))
            support = [int((table[primary].get(name) or {}).get("support") or 0) for name in run.labels]
            return plots.plot_per_label_f1(run.labels, f1, support, thresholds(run), plot_dir / "per_label_f1.png")

        attempt("plots/per_label_f1.png", f1_plot)
    return written, notes


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_run_artifacts(run_dir: str | Path) -> list[Path]:
    """Write plots/*.png, errors.csv and per_class.csv from the run's files; returns what was written.

    Missing pieces (no evaluation yet, no predictions) are skipped; a failing plot is logged, not raised.
    """
    run = load_run(run_dir)
    written, notes = _artifacts(run)
    for note in [*run.problems, *notes]:
        log.warning("%s", note)
    return written


# ---------------------------------------------------------------- console summary


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) < 1e6 and value != 0 and abs(value) >= 1:
            return f"{value:g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def _fmt_seconds(seconds) -> str:
    if not plots.is_number(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _fmt_params(n) -> str:
    if not plots.is_number(n):
        return "—"
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def _metric_items(scores: dict | None, best_metric: str | None) -> list[tuple[str, float]]:
    """Numeric metrics of a metrics.json section, selection metric first, loss last, no bookkeeping keys."""
    if not isinstance(scores, dict):
        return []
    keys = plots.metric_keys([scores])
    if "loss" in scores and plots.is_number(scores["loss"]):
        keys.append("loss")
    if best_metric in keys:
        keys.remove(best_metric)
        keys.insert(0, best_metric)
    return [(k, float(scores[k])) for k in keys]


_HEADLINE = ("accuracy", "macro_f1", "loss", "weighted_f1", "micro_f1")


def _headline(scores: dict | None, best_metric: str | None, limit: int) -> list[tuple[str, float]]:
    """The few metrics worth a glance: the selection metric, then accuracy / F1 / loss."""
    items = dict(_metric_items(scores, best_metric))
    order = [k for k in (best_metric, *_HEADLINE) if k in items]
    order = list(dict.fromkeys(order)) or list(items)
    return [(k, items[k]) for k in order[:limit]]


def _where(best: dict) -> str:
    parts = []
    if plots.is_number(best.get("epoch")):
        parts.append(f"epoch {_fmt(best['epoch'])}")
    if plots.is_number(best.get("step")):
        parts.append(f"step {_fmt(best['step'])}")
    return " (" + ", ".join(parts) + ")" if parts else ""


def summary_lines(run_dir: str | Path) -> list[str]:
    """The short summary `train` prints last: best, test, time, where things are, how to predict."""
    run = load_run(run_dir)
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    lines = []
    if best_metric and plots.is_number(best.get(best_metric)):
        lines.append(f"Best {best_metric}: {best[best_metric]:.4f}{_where(best)}")
    elif metrics and "validation" not in metrics:  # a finished run with nothing to select on (few-shot recipes)
        lines.append("No validation split, so the saved model is the last epoch's.")
    else:
        lines.append("No evaluation finished, so there is no best metric (see train.log).")
    test = _headline(metrics.get("test"), best_metric, limit=3)
    if test:
        lines.append("Test: " + ", ".join(f"{k} {v:.4f}" for k, v in test))
    info = run.run or {}
    if plots.is_number(info.get("train_seconds")):
        hardware = info.get("hardware") if isinstance(info.get("hardware"), dict) else {}
        gpu, device = hardware.get("gpu"), hardware.get("device")
        device = gpu if isinstance(gpu, str) and gpu else device
        lines.append(f"Time: {_fmt_seconds(info['train_seconds'])}" + (f" on {device}" if device else ""))
    model = run.root / "model"
    lines.append(f"Model: {model}" if model.is_dir() else f"Model: not saved ({model} is missing)")
    report = run.root / "report.html"
    quoted = shlex.quote(str(run.root))
    lines.append(f"Report: {report}" if report.is_file() else f"Report: textxfer report {quoted}")
    if model.is_dir():
        lines.append(f"Predict: textxfer predict {quoted} --input FILE")
    return lines


# ---------------------------------------------------------------- report.html

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 12px;border-bottom:1px solid #e3e6eb;padding-bottom:6px}
section{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:16px 20px;margin:16px 0}
.sub{color:#5b6475;margin:0}
.warn{background:#fff7e6;border-color:#f0c36d}.warn li{margin:4px 0}
table{border-collapse:collapse;font-size:.92em}
th,td{border-bottom:1px solid #eceef2;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.kv th{background:none;font-weight:600;white-space:nowrap;position:static}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3e6eb;border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#5b6475;font-size:.85em}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.zoomable{overflow:auto;max-height:1500px;border:1px solid #eceef2}
.zoom{margin:0 6px 0 0}.zoom:checked+label+.zoomable img{max-width:none}
pre{background:#f4f5f7;padding:12px;border-radius:6px;overflow:auto;font-size:.85em}
td.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
nav a{margin-right:12px;color:#2160c4;text-decoration:none}
"""


def _e(value) -> str:
    return html.escape(_HF_TOKEN.sub("hf_***", str(value)), quote=True)


def _kv_table(items: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _plain(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return _fmt(value)


def _img(path: Path, alt: str, zoom: bool | None = None) -> str:
    """The PNG inlined as a data URI; with zoom set, a CSS-only checkbox toggles fit-to-width / full size."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
    if zoom is None:
        return img
    key = re.sub(r"\W", "-", path.stem)
    return (f'<input type="checkbox" class="zoom" id="zoom-{key}"{" checked" if zoom else ""}>'
            f'<label for="zoom-{key}">full size (scroll inside the frame)</label><div class="zoomable">{img}</div>')


def _section(anchor: str, title: str, body: str, extra_class: str = "") -> str:
    cls = f' class="{extra_class}"' if extra_class else ""
    return f'<section id="{anchor}"{cls}><h2>{_e(title)}</h2>{body}</section>'


def _missing_warnings(run: RunFiles) -> list[str]:
    out = list(run.problems)
    names = {
        "run.json": "model, strategy, parameters, timing and hardware are unknown",
        "recipe.yaml": "the recipe cannot be shown",
        "history.json": "no loss or metric curves",
        "metrics.json": "no metrics table",
    }
    present = {"run.json": run.run, "recipe.yaml": run.recipe_text, "history.json": run.history,
               "metrics.json": run.metrics}
    for name, why in names.items():
        if present[name] is None and not any(p.startswith(name) for p in run.problems):
            out.append(f"{name} is missing: {why}.")
    if not run.eval_records and run.metrics is None:
        out.append("The run has no evaluation: it stopped before its first evaluation (or is still running). "
                   "This page shows what exists; train.log says why it stopped.")
    if not run.examples:
        out.append("predictions/validation.jsonl and predictions/test.jsonl are missing: no confusion matrix "
                   "and no list of mistakes.")
    if run.run is not None and run.run.get("finished") is False:
        out.append("run.json says the run did not finish (finished: false).")
    if not (run.root / "model").is_dir():
        out.append(f"model/ is missing from {run.root}: no model was saved.")
    return out


def _overview(run: RunFiles) -> str:
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    cards = []
    if best_metric and plots.is_number(best.get(best_metric)):
        cards.append((f"best validation {best_metric}", f"{best[best_metric]:.4f}", _where(best).strip(" ()")))
    for k, v in _headline(metrics.get("test"), best_metric, limit=3):
        cards.append((f"test {k}", f"{v:.4f}", ""))
    info = run.run or {}
    if plots.is_number(info.get("train_seconds")):
        cards.append(("training time", _fmt_seconds(info["train_seconds"]), ""))
    if plots.is_number(info.get("trainable_params")) and plots.is_number(info.get("total_params")) and info["total_params"]:
        share = 100 * info["trainable_params"] / info["total_params"]
        cards.append(("trainable parameters", _fmt_params(info["trainable_params"]),
                      f"{share:.2f}% of {_fmt_params(info['total_params'])}"))
    if not cards:
        return ""
    html_cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="k">{_e(note)}</div></div>' for k, v, note in cards)
    return f'<section id="overview"><div class="cards">{html_cards}</div></section>'


def _metrics_table(run: RunFiles) -> str:
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    columns = [("best (validation)", metrics.get("best")), ("validation (final)", metrics.get("validation")),
               ("test", metrics.get("test"))]
    columns = [(name, scores) for name, scores in columns if isinstance(scores, dict) and scores]
    if not columns:
        return ""
    keys: list[str] = []
    for _, scores in columns:
        for k, _v in _metric_items(scores, best_metric):
            if k not in keys:
                keys.append(k)
    head = "".join(f'<th class="n">{_e(name)}</th>' for name, _ in columns)
    rows = []
    for k in keys:
        cells = "".join(
            f'<td class="n">{_e(f"{s[k]:.4f}") if plots.is_number(s.get(k)) else "—"}</td>' for _, s in columns)
        mark = " (selects the best checkpoint)" if k == best_metric else ""
        rows.append(f"<tr><th>{_e(k + mark)}</th>{cells}</tr>")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    note = f'<p class="sub">Best checkpoint{_e(_where(best))}.</p>' if _where(best) else ""
    return _section("metrics", "Metrics", f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>{note}")


def _model_section(run: RunFiles) -> str:
    info = run.run
    if not info:
        return ""
    items = [("model", info.get("model_name")), ("task", info.get("task")),
             ("labels", f"{len(run.labels)}" + (" (multi-label)" if run.multi_label else ""))]
    if plots.is_number(info.get("trainable_params")):
        total = info.get("total_params")
        share = f" ({100 * info['trainable_params'] / total:.2f}% of {_fmt(total)})" if plots.is_number(total) and total else ""
        items.append(("trainable parameters", f"{_fmt(info['trainable_params'])}{share}"))
    if info.get("frozen"):
        items.append(("frozen", ", ".join(map(str, info["frozen"]))))
    strategy = info.get("strategy")
    body = _kv_table([(k, _plain(v)) for k, v in items if v is not None])
    if isinstance(strategy, dict) and strategy:
        body += "<h3>Strategy</h3>" + _kv_table([(k, _plain(v)) for k, v in strategy.items()])
    elif strategy:
        body += "<h3>Strategy</h3>" + _kv_table([("strategy", _plain(strategy))])
    data = info.get("data")
    if isinstance(data, dict) and data:
        rows = "".join(
            f'<tr><th>{_e(split)}</th><td class="n">{_e(_fmt((d or {}).get("rows")))}</td>'
            f'<td>{_e((d or {}).get("source", ""))}</td><td>{_e((d or {}).get("fingerprint", ""))}</td></tr>'
            for split, d in data.items() if isinstance(d, dict))
        body += f"<h3>Data</h3><table><tr><th>split</th><th>rows</th><th>source</th><th>fingerprint</th></tr>{rows}</table>"
    return _section("model", "Model and transfer strategy", body)


def _timing_section(run: RunFiles) -> str:
    info = run.run
    if not info:
        return ""
    items = [("command", info.get("command")), ("started", info.get("started_at")),
             ("finished", info.get("finished_at")), ("training time", _fmt_seconds(info.get("train_seconds"))),
             ("finished normally", info.get("finished")), ("processes", info.get("num_processes")),
             ("textxfer", info.get("textxfer_version"))]
    hardware = info.get("hardware")
    if isinstance(hardware, dict):
        items += [(k, v) for k, v in hardware.items()]
    body = _kv_table([(k, _plain(v)) for k, v in items if v is not None])
    versions = info.get("versions")
    if isinstance(versions, dict) and versions:
        body += "<details><summary>Package versions</summary>" + _kv_table(
            [(k, _plain(v)) for k, v in versions.items()]) + "</details>"
    return _section("timing", "Timing and hardware", body)


def _plots_section(run: RunFiles) -> str:
    plot_dir = run.root / "plots"
    parts = []
    for name in ("loss", "metrics"):
        if (plot_dir / f"{name}.png").is_file():
            parts.append(_img(plot_dir / f"{name}.png", f"{name} plot"))
    if (plot_dir / "per_label_f1.png").is_file():
        parts.append("<h3>Per-label F1 and thresholds</h3>" + _img(plot_dir / "per_label_f1.png", "per-label F1"))
    if (plot_dir / "confusion.png").is_file():
        # many classes: open at full size so label names are readable; the toggle shows the whole matrix
        n = len(run.labels)
        parts.append("<h3>Confusion matrix</h3>"
                     + _img(plot_dir / "confusion.png", "confusion matrix", zoom=n > 40 if n > 20 else None))
    if not parts:
        return ""
    return _section("plots", "Plots", "".join(parts))


def _pairs_section(run: RunFiles) -> str:
    split = run.primary_split
    if split is None or run.multi_label:
        return ""
    counts, support = confusion_counts(run.examples[split], run.labels)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:TOP_PAIRS]
    rows = []
    for flat in order:
        t, p = divmod(int(flat), len(run.labels))
        if off[t, p] == 0:
            break
        rows.append(f'<tr><td>{_e(run.labels[t])}</td><td>{_e(run.labels[p])}</td><td class="n">{off[t, p]}</td>'
                    f'<td class="n">{100 * off[t, p] / max(support[t], 1):.1f}%</td></tr>')
    if not rows:
        return ""
    body = (f'<p class="sub">{_e(split)} split: the true class most often predicted as another.</p>'
            "<table><tr><th>true</th><th>predicted</th><th>count</th><th>share of true class</th></tr>"
            + "".join(rows) + "</table>")
    return _section("pairs", "Most confused pairs", body)


def _per_class_section(run: RunFiles, table: dict[str, dict[str, dict]]) -> str:
    if not table:
        return ""
    primary = "test" if "test" in table else next(iter(table))
    other = next((s for s in table if s != primary), None)
    thr = thresholds(run) if run.multi_label else None
    rows_data = table[primary]
    names = [n for n in run.labels if n in rows_data] + sorted(set(rows_data) - set(run.labels))
    names.sort(key=lambda n: rows_data[n].get("f1") if plots.is_number(rows_data[n].get("f1")) else -1.0)
    head = (f"<tr><th>label</th><th class='n'>support</th><th class='n'>precision</th><th class='n'>recall</th>"
            f"<th>F1 ({_e(primary)})</th>" + (f"<th class='n'>F1 ({_e(other)})</th>" if other else "")
            + ("<th class='n'>threshold</th>" if thr else "") + "</tr>")
    rows = []
    index = {n: i for i, n in enumerate(run.labels)}

    def num(v) -> str:
        return _e(f"{v:.3f}") if plots.is_number(v) else "—"

    for name in names:
        s = rows_data[name]
        f1 = s.get("f1")
        width = 100 * f1 if plots.is_number(f1) else 0
        bar = f'style="background:linear-gradient(90deg,#cfe0f5 {width:.0f}%,transparent {width:.0f}%)"'
        cells = (f"<td>{_e(name)}</td><td class='n'>{_e(_fmt(s.get('support')))}</td>"
                 f"<td class='n'>{num(s.get('precision'))}</td><td class='n'>{num(s.get('recall'))}</td>"
                 f"<td class='n' {bar}>{num(f1)}</td>")
        if other:
            cells += f"<td class='n'>{num((table[other].get(name) or {}).get('f1'))}</td>"
        if thr:
            cells += f"<td class='n'>{num(thr[index[name]]) if name in index else '—'}</td>"
        rows.append(f"<tr>{cells}</tr>")
    body = (f'<p class="sub">{_e(primary)} split, sorted by F1, worst first. Also in per_class.csv.</p>'
            f"<table>{head}{''.join(rows)}</table>")
    return _section("per-class", "Per-class results", body)


def _mistakes_section(run: RunFiles) -> str:
    if not run.examples:
        return ""
    wrong = mistakes(run)
    total = sum(len(v) for v in run.examples.values())
    if not wrong:
        return _section("mistakes", "Top mistakes", f'<p class="sub">No mistakes in {total:,} examples.</p>')
    what = "image" if run.task == "image" else "text"
    head = ("<tr><th>#</th><th>split</th><th class='n'>confidence</th><th>true</th><th>predicted</th>"
            + ("<th>missed / extra</th>" if run.multi_label else "") + f"<th>{what}</th></tr>")
    rows = []
    for i, e in enumerate(wrong[:TOP_MISTAKES], 1):
        text = " ".join(e.text.split())  # one paragraph per row; the full text is in errors.csv
        text = text if len(text) <= 400 else text[:400] + "…"
        diff = ""
        if run.multi_label:
            missed = [n for n in e.label if n not in e.pred]
            extra = [n for n in e.pred if n not in e.label]
            diff = f"<td>missed: {_e(', '.join(missed) or '—')}<br>extra: {_e(', '.join(extra) or '—')}</td>"
        shown = (lambda v: ", ".join(v) or "(none)") if run.multi_label else str
        rows.append(f"<tr><td class='n'>{i}</td><td>{_e(e.split)}</td><td class='n'>{e.confidence:.3f}</td>"
                    f"<td>{_e(shown(e.label))}</td><td>{_e(shown(e.pred))}</td>{diff}"
                    f"<td class='text'>{_e(text)}</td></tr>")
    body = (f'<p class="sub">{len(wrong):,} wrong of {total:,} validation/test examples; the '
            f"{min(len(wrong), TOP_MISTAKES)} most confident mistakes (often label noise). All are in errors.csv.</p>"
            f"<table>{head}{''.join(rows)}</table>")
    return _section("mistakes", "Top mistakes", body)


def _recipe_section(run: RunFiles) -> str:
    if run.recipe_text is None:
        return ""
    return _section("recipe", "Recipe (resolved)", f"<pre>{_e(run.recipe_text)}</pre>")


def _render(run: RunFiles, warnings: list[str], table: dict[str, dict[str, dict]]) -> str:
    info = run.run or {}
    title = f"textxfer run: {info.get('model_name') or run.root.name}"
    recipe_name = None
    if run.recipe_text:
        try:
            recipe = yaml.safe_load(run.recipe_text)
            recipe_name = recipe.get("name") if isinstance(recipe, dict) else None
        except yaml.YAMLError:
            warnings.append("recipe.yaml is not valid YAML; it is shown as text.")
    sub = " · ".join(str(x) for x in (recipe_name, run.root.resolve(), info.get("finished_at")) if x)
    sections = [
        _overview(run),
        _section("warnings", "What is missing", "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>",
                 "warn") if warnings else "",
        _metrics_table(run), _plots_section(run), _pairs_section(run), _per_class_section(run, table),
        _mistakes_section(run), _model_section(run), _timing_section(run), _recipe_section(run),
    ]
    sections = [s for s in sections if s]
    found = re.findall(r'<section id="([^"]+)"[^>]*><h2>([^<]*)</h2>', "".join(sections))
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in found)
    predict = ""
    if (run.root / "model").is_dir():
        predict = (f'<p class="sub">Predict with it: <code>textxfer predict {_e(shlex.quote(str(run.root)))} '
                   "--input FILE</code></p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(sub)}</p>{predict}<nav>{nav}</nav>"
        + "".join(sections)
        + '<p class="sub">Written by textxfer report from the files of the run directory.</p></main></body></html>\n'
    )


def build_report(run_dir: str | Path) -> Report:
    """(Re)write the run's artifacts and report.html; the warnings say what is missing or failed."""
    run = load_run(run_dir)
    written, notes = _artifacts(run)
    warnings = _missing_warnings(run) + notes
    page = _render(run, warnings, per_class(run))
    path = run.root / "report.html"
    tmp = path.with_suffix(".html.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"Cannot write {path} ({exc.strerror or exc}). Make the run directory writable, "
                        "or copy it somewhere writable and run `textxfer report` on the copy.") from exc
    for w in warnings:  # the caller shows them (the CLI prints them); keep them in a log that asks for detail
        log.info("report: %s", w)
    return Report(path, warnings, [*written, path])


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html, one self-contained page (images inlined, no URL); returns its path."""
    return build_report(run_dir).path


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--open", "open_browser", is_flag=True, help="Open report.html in the default web browser.")
def report_command(run_dir: Path, open_browser: bool) -> None:
    """Write RUN_DIR/report.html: plots, metrics, per-class table and top mistakes of a training run."""
    report = build_report(run_dir)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"Wrote {report.path}")
    if open_browser:
        webbrowser.open(report.path.resolve().as_uri())
