"""The few lines `textxfer train` prints last: best and test scores, time, and where the model and report are."""

from __future__ import annotations

import shlex
from pathlib import Path

from textxfer.outputs import plots
from textxfer.outputs.report_format import best_checkpoint_position, format_seconds, headline_metrics
from textxfer.outputs.run_reading import load_run


def summary_lines(run_dir: str | Path) -> list[str]:
    """The short summary `train` prints last: best, test, time, where things are, how to predict."""
    run = load_run(run_dir)
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    lines = []
    if best_metric and plots.is_number(best.get(best_metric)):
        lines.append(f"Best {best_metric}: {best[best_metric]:.4f}{best_checkpoint_position(best)}")
    elif metrics and "validation" not in metrics:  # a finished run with nothing to select on (few-shot recipes)
        lines.append("No validation split, so the saved model is the last epoch's.")
    elif run.metrics is None and run.unreadable("metrics.json"):
        lines.append("metrics.json could not be read, so there is no best metric (`textxfer report` says why).")
    else:
        lines.append("No evaluation finished, so there is no best metric (see train.log).")
    test = headline_metrics(metrics.get("test"), best_metric, limit=3)
    if test:
        lines.append("Test: " + ", ".join(f"{k} {v:.4f}" for k, v in test))
    info = run.run or {}
    if plots.is_number(info.get("train_seconds")):
        hardware = info.get("hardware") if isinstance(info.get("hardware"), dict) else {}
        gpu, device = hardware.get("gpu"), hardware.get("device")
        device = gpu if isinstance(gpu, str) and gpu else device
        lines.append(f"Time: {format_seconds(info['train_seconds'])}" + (f" on {device}" if device else ""))
    model = run.root / "model"
    lines.append(f"Model: {model}" if model.is_dir() else f"Model: not saved ({model} is missing)")
    report = run.root / "report.html"
    quoted = shlex.quote(str(run.root))
    lines.append(f"Report: {report}" if report.is_file() else f"Report: textxfer report {quoted}")
    if model.is_dir():
        lines.append(f"Predict: textxfer predict {quoted} --input FILE")
    return lines
