"""The files the report writes next to a run besides the page: plots/*.png, confusion.csv, errors.csv, per_class.csv.

Each file is attempted on its own and a failure is noted rather than raised, so one broken plot never costs
the others, the page, or the saved model.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textxfer.outputs import plots
from textxfer.outputs.run_reading import SPLITS, RunFiles, load_run
from textxfer.outputs.run_scores import confusion_counts, mistakes, per_class, thresholds

log = logging.getLogger(__name__)

MULTI_SEP = "|"  # joins label sets of multi-label runs in errors.csv
ERROR_COLUMNS = ["split", "text", "label", "pred", "confidence"]
PER_CLASS_COLUMNS = ["split", "label", "precision", "recall", "f1", "support"]


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


def write_artifacts(run: RunFiles) -> tuple[list[Path], list[str]]:
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
    written, notes = write_artifacts(run)
    for note in [*run.problems, *notes]:
        log.warning("%s", note)
    return written
