"""The PNG plots of a run (loss, validation metrics, confusion matrix, per-label F1).

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, never through pyplot:
no display is needed, the global backend of a notebook that calls `train` is left alone, and no figure
stays registered in memory. matplotlib is imported inside the functions so that importing textxfer
stays fast and a broken matplotlib only loses the plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 110
# values that are bookkeeping, not metrics, in an evaluation record
_NOT_METRICS = {"step", "epoch", "split", "loss"}
_NOT_METRIC_PARTS = ("runtime", "per_second", "seconds", "samples", "num_", "time")


def new_figure(width: float, height: float):
    """A Figure drawn by the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", facecolor="white")
    return path


def ema(values: Sequence[float], span: float) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard smooths): early points are not pulled to 0."""
    weight = 1.0 - 1.0 / max(span, 1.0)
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return "loss" in name or name in {"mse", "mae", "rmse", "perplexity", "error", "hamming_loss"}


def metric_keys(evals: Sequence[dict]) -> list[str]:
    """Numeric metric names found in evaluation records, in first-seen order."""
    keys: list[str] = []
    for record in evals:
        for key, value in record.items():
            if key in _NOT_METRICS or key in keys or any(p in key for p in _NOT_METRIC_PARTS):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                keys.append(key)
    return keys


def _step_to_epoch(train: Sequence[dict], evals: Sequence[dict]):
    """(forward, inverse) maps step <-> epoch from the logged records, or None when they do not allow it."""
    pairs = sorted(
        {(float(r["step"]), float(r["epoch"])) for r in [*train, *evals] if is_number(r.get("step")) and is_number(r.get("epoch"))}
    )
    if len(pairs) < 2:
        return None
    steps = np.array([p[0] for p in pairs])
    epochs = np.array([p[1] for p in pairs])
    if np.any(np.diff(steps) <= 0) or np.any(np.diff(epochs) <= 0):
        return None
    return (lambda s: np.interp(s, steps, epochs)), (lambda e: np.interp(e, epochs, steps))


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plot_loss(train: Sequence[dict], evals: Sequence[dict], path: Path) -> Path | None:
    """Training loss per logged step (raw, faint; EMA-smoothed, bold) and validation loss per evaluation."""
    train_pts = [(r["step"], r["loss"]) for r in train if is_number(r.get("step")) and is_number(r.get("loss"))]
    eval_pts = [(r["step"], r["loss"]) for r in evals if is_number(r.get("step")) and is_number(r.get("loss"))]
    if not train_pts and not eval_pts:
        return None
    fig = new_figure(9, 4.8)
    ax = fig.add_subplot()
    if train_pts:
        steps, losses = np.array(train_pts, dtype=float).T
        if len(steps) >= 30:  # enough points for smoothing to show a trend rather than lag behind it
            span = min(max(len(steps) / 15, 2.0), 50.0)
            ax.plot(steps, losses, color="#1f77b4", alpha=0.3, linewidth=1, label="train loss (raw)")
            ax.plot(steps, ema(losses, span), color="#1f77b4", linewidth=2,
                    label=f"train loss (smoothed, EMA span {span:.0f})")
        else:
            ax.plot(steps, losses, "o-", color="#1f77b4", label="train loss")
    if eval_pts:
        steps, losses = np.array(eval_pts, dtype=float).T
        ax.plot(steps, losses, "o-", color="#d62728", linewidth=2, markersize=6, label="validation loss")
        best = int(np.argmin(losses))
        right = steps[best] > (steps.min() + steps.max()) / 2 if len(steps) > 1 else False
        ax.annotate(f"min {losses[best]:.4g}", (steps[best], losses[best]), textcoords="offset points",
                    xytext=(-6 if right else 6, -16), ha="right" if right else "left", fontsize=9,
                    color="#d62728")
    maps = _step_to_epoch(train, evals)
    if maps is not None:
        top = ax.secondary_xaxis("top", functions=maps)
        top.set_xlabel("epoch")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return save_figure(fig, path)


def _find_best(evals: Sequence[dict], metric: str, best: dict | None) -> int | None:
    """Index of the best evaluation: the one metrics.json names (by step, then epoch), else the extreme."""
    values = [r.get(metric) for r in evals]
    if best:
        for key in ("step", "epoch"):
            if is_number(best.get(key)):
                for i, r in enumerate(evals):
                    if is_number(r.get(key)) and float(r[key]) == float(best[key]) and is_number(values[i]):
                        return i
    scored = [(v, i) for i, v in enumerate(values) if is_number(v)]
    if not scored:
        return None
    return (min(scored) if lower_is_better(metric) else max(scored, key=lambda t: (t[0], -t[1])))[1]


def plot_metrics(evals: Sequence[dict], best_metric: str | None, best: dict | None, path: Path) -> Path | None:
    """Validation metrics per evaluation, with the best evaluation of the selection metric marked."""
    keys = metric_keys(evals)
    if best_metric and best_metric not in keys and any(is_number(r.get(best_metric)) for r in evals):
        keys.insert(0, best_metric)
    if not keys:
        return None
    use_epoch = all(is_number(r.get("epoch")) for r in evals) and len({r["epoch"] for r in evals}) == len(evals)
    xkey = "epoch" if use_epoch else "step"
    if not all(is_number(r.get(xkey)) for r in evals):
        xs_all = list(range(1, len(evals) + 1))
        xlabel = "evaluation"
    else:
        xs_all = [float(r[xkey]) for r in evals]
        xlabel = xkey
    # metrics that are the same series (single-label micro F1 is accuracy) are drawn once, named together
    series: dict[tuple, list[str]] = {}
    for key in keys:
        pts = tuple((x, round(float(r[key]), 9)) for x, r in zip(xs_all, evals, strict=True) if is_number(r.get(key)))
        series.setdefault(pts, []).append(key)
    fig = new_figure(9, 4.8)
    ax = fig.add_subplot()
    for pts, names in series.items():
        xs, ys = zip(*pts, strict=True)
        bold = best_metric in names
        ax.plot(xs, ys, "o-", linewidth=2.4 if bold else 1.4, markersize=5, label=" = ".join(names),
                zorder=3 if bold else 2)
    target = best_metric if best_metric in keys else keys[0]
    idx = _find_best(evals, target, best)
    if idx is not None:
        bx, by = xs_all[idx], float(evals[idx][target])
        ax.axvline(bx, color="gray", linestyle="--", linewidth=1, alpha=0.7)
        ax.plot([bx], [by], marker="*", markersize=18, color="gold", markeredgecolor="black", zorder=5,
                label=f"best {target}")
        where = f"epoch {evals[idx]['epoch']:g}" if is_number(evals[idx].get("epoch")) else f"step {evals[idx].get('step')}"
        right = len(xs_all) > 1 and bx > (min(xs_all) + max(xs_all)) / 2
        ax.annotate(f"best {target} {by:.4f}\n{where}", (bx, by), textcoords="offset points",
                    xytext=(-10 if right else 10, -32), ha="right" if right else "left", fontsize=9,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "gray", "alpha": 0.9})
    if all(float(x).is_integer() for x in xs_all):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("value")
    ax.set_title("Validation metrics per evaluation")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0)
    return save_figure(fig, path)


def _short(label: str, limit: int = 40) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def plot_confusion(labels: Sequence[str], counts: np.ndarray, path: Path, title: str) -> Path | None:
    """Row-normalised confusion matrix; scales cell size and fonts so ~80 classes stay readable.

    Cell (t, p) = share of the examples of true class t predicted as p, so the diagonal is the recall.
    Colours use a square-root scale so that small confusions (a few percent) are still visible.
    """
    n = len(labels)
    if n == 0 or counts.shape != (n, n):
        return None
    support = counts.sum(axis=1)
    norm = counts / np.maximum(support[:, None], 1)
    return _draw_matrix(labels, norm, counts, support, path, title,
                        cbar="share of the true class (row)")


def plot_confusion_multilabel(labels: Sequence[str], counts: np.ndarray, support: np.ndarray, path: Path,
                              title: str) -> Path | None:
    """Multi-label confusion: diagonal (t, t) = share of the examples with true label t where t was predicted
    (recall); off-diagonal (t, p) = share where p was predicted although p is not one of their true labels."""
    n = len(labels)
    if n == 0 or counts.shape != (n, n):
        return None
    norm = counts / np.maximum(support[:, None], 1)
    return _draw_matrix(labels, norm, counts, support, path, title,
                        cbar="share of the examples with the true label (row)")


def _draw_matrix(labels, norm, counts, support, path, title, cbar) -> Path:
    from matplotlib.colors import PowerNorm

    n = len(labels)
    if n <= 12:
        cell, font = 0.75, 10.0
    elif n <= 30:
        cell, font = 0.4, 8.5
    elif n <= 100:
        cell, font = 0.24, 7.0
    else:  # beyond banking77's size: keep the picture within a few thousand pixels
        cell, font = 0.16, 5.0
    shown_y = [f"{_short(lab)} ({int(s)})" for lab, s in zip(labels, support, strict=True)]
    shown_x = [_short(lab) for lab in labels]
    longest = max(len(s) for s in shown_y + shown_x)
    margin = longest * font * 0.62 / 72 + 1.0
    side = max(n * cell, 3.0)
    fig = new_figure(side + margin + 1.4, side + margin + 0.8)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), aspect="equal",
                      interpolation="nearest")
    flat = n <= 8 and max(len(s) for s in shown_x) <= 14
    ax.set_xticks(range(n), shown_x, rotation=0 if flat else 90, fontsize=font)
    ax.set_yticks(range(n), shown_y, fontsize=font)
    ax.set_xlabel("predicted label", fontsize=font + 2)
    ax.set_ylabel("true label (support)", fontsize=font + 2)
    ax.xaxis.set_label_position("bottom")
    if n > 12:
        # thin grid between cells so a row can be followed across a wide matrix
        edges = np.arange(-0.5, n, 1)  # line collections: minor ticks would cost a tick object per edge
        ax.vlines(edges, -0.5, n - 0.5, color="#dddddd", linewidth=0.4)
        ax.hlines(edges, -0.5, n - 0.5, color="#dddddd", linewidth=0.4)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if counts[i, j] == 0:
                    continue
                value = norm[i, j]
                ax.text(j, i, f"{value:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                        fontsize=font - 1, color="white" if value > 0.45 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.035 if n > 30 else 0.046, pad=0.02)
    bar.set_label(cbar + ", square-root colour scale", fontsize=font + 1)
    bar.ax.tick_params(labelsize=font)
    ax.set_title(title, fontsize=font + 4, pad=12)
    return save_figure(fig, path)


def plot_per_label_f1(labels: Sequence[str], f1: dict[str, Sequence[float | None]], support: Sequence[int],
                      thresholds: Sequence[float] | None, path: Path) -> Path | None:
    """Multi-label: F1 per label (one bar per split), next to the decision threshold tuned for that label."""
    n = len(labels)
    splits = [s for s in ("validation", "test") if s in f1]
    if n == 0 or not splits:
        return None
    primary = "test" if "test" in splits else splits[0]
    order = sorted(range(n), key=lambda i: -(f1[primary][i] or 0.0))  # best at the top
    height = max(3.0, 0.32 * n + 1.2)
    fig = new_figure(11, height)
    has_thr = thresholds is not None and len(thresholds) == n
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 1] if has_thr else [1, 0.001], wspace=0.12)
    ax = fig.add_subplot(grid[0, 0])
    ypos = np.arange(n)
    bar_h = 0.8 / len(splits)
    colours = {"validation": "#9ecae1", "test": "#2171b5"}
    for k, split in enumerate(splits):
        vals = [f1[split][i] or 0.0 for i in order]
        offset = (k - (len(splits) - 1) / 2) * bar_h
        ax.barh(ypos + offset, vals, height=bar_h, color=colours[split], label=f"{split} F1")
        if split == primary:
            for y, v in zip(ypos + offset, vals, strict=True):
                ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=8)
    ax.set_yticks(ypos, [f"{_short(labels[i], 30)} ({support[i]})" for i in order], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1")
    ax.set_title(f"Per-label F1, best first; label (support in {primary})")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if has_thr:
        tax = fig.add_subplot(grid[0, 1], sharey=ax)
        thr = [float(thresholds[i]) for i in order]
        tax.hlines(ypos, 0, thr, color="#999999", linewidth=1)
        tax.plot(thr, ypos, "o", color="#e6550d")
        for y, t in zip(ypos, thr, strict=True):
            tax.text(t + 0.03, y, f"{t:.2f}", va="center", fontsize=8)
        tax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
        tax.set_xlim(0, 1.05)
        tax.set_xticks([0, 0.5, 1])
        tax.set_xlabel("threshold")
        tax.set_title("tuned threshold")
        tax.tick_params(axis="y", labelleft=False)
        tax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)
