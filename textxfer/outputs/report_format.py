"""How a run's values read in text: numbers, durations, parameter counts, and which metrics to show first.

Shared by the console summary and report.html so both say the same thing in the same words.
"""

from __future__ import annotations

import math

from textxfer.outputs import plots


def format_value(value: object) -> str:
    """A recorded value for people: — for missing, yes/no, thousands separators, 4 decimals."""
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


def format_seconds(seconds: object) -> str:
    """A duration as 12.3s, 4m 05s or 1h 02m 05s; — when not a number."""
    if not plots.is_number(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def format_params(n: object) -> str:
    """A parameter count as 1.2B, 66.4M, 12.0k; — when not a number."""
    if not plots.is_number(n):
        return "—"
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def metric_items(scores: dict | None, best_metric: str | None) -> list[tuple[str, float]]:
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


def headline_metrics(scores: dict | None, best_metric: str | None, limit: int) -> list[tuple[str, float]]:
    """The few metrics worth a glance: the selection metric, then accuracy / F1 / loss."""
    items = dict(metric_items(scores, best_metric))
    order = [k for k in (best_metric, *_HEADLINE) if k in items]
    order = list(dict.fromkeys(order)) or list(items)
    return [(k, items[k]) for k in order[:limit]]


def best_checkpoint_position(best: dict) -> str:
    """Where the best checkpoint was, as " (epoch 3, step 1,200)"; empty when unknown."""
    parts = []
    if plots.is_number(best.get("epoch")):
        parts.append(f"epoch {format_value(best['epoch'])}")
    if plots.is_number(best.get("step")):
        parts.append(f"step {format_value(best['step'])}")
    return " (" + ", ".join(parts) + ")" if parts else ""
