"""What `textxfer compare` writes from its runs: one row per (few-shot size, strategy) with means ± standard
deviations over seeds, the best strategy and whether it is ahead of the runner-up (paired by seed, judged with
Student's t), the markdown and CSV tables, and the two plots (score against train time, learning curves).

Single few-shot runs are noise; means over seeds and seed-paired differences are what the verdict rests on.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from textxfer.tools.compare_runs import RunRecord


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN, NaN with no values; std 0 with one)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


# Headline metric -> its name in tables and plots.
METRIC_LABELS = {"accuracy": "accuracy", "micro_f1": "micro-F1"}


def headline(metrics: dict) -> str:
    """The figure strategies are ranked by: accuracy, or micro-F1 on multi-label data (where `accuracy` is the
    share of texts with every label right, too harsh to rank by). Single-label runs report a micro-F1 too (equal to
    accuracy), so multi-label runs are told by a figure only they report."""
    return "micro_f1" if "hamming_loss" in metrics else "accuracy"


def summarise(records: list[RunRecord]) -> list[dict]:
    """One row per (shots, variant): the headline figure (`metric`: accuracy or micro-F1), accuracy and macro-F1,
    each mean ± std over seeds; time, parameters, memory."""
    rows = []
    keys = list(dict.fromkeys((r.examples_per_class, r.variant) for r in records))
    for shots, variant in keys:
        runs = [r for r in records if r.examples_per_class == shots and r.variant == variant]
        ok = [r for r in runs if r.ok]
        metric = headline(ok[0].metrics) if ok else "accuracy"
        score = mean_std([r.metrics[metric] for r in ok if metric in r.metrics])
        acc = mean_std([r.metrics["accuracy"] for r in ok if "accuracy" in r.metrics])
        f1 = mean_std([r.metrics["macro_f1"] for r in ok if "macro_f1" in r.metrics])
        secs = mean_std([r.train_seconds for r in ok if r.train_seconds is not None])
        mem = [r.peak_memory_mb for r in ok if r.peak_memory_mb is not None]
        rows.append({
            "examples_per_class": shots, "strategy": variant,
            "runs_ok": len(ok), "runs_failed": len(runs) - len(ok),
            "metric": metric, "score_mean": score[0], "score_std": score[1],
            "accuracy_mean": acc[0], "accuracy_std": acc[1], "macro_f1_mean": f1[0], "macro_f1_std": f1[1],
            "train_seconds_mean": secs[0], "trainable_params": ok[0].trainable_params if ok else None,
            "peak_memory_mb": max(mem) if mem else None, "split": ok[0].split if ok else "",
            "error": "; ".join(sorted({r.error for r in runs if not r.ok})),
        })
    return rows


def best_rows(rows: list[dict]) -> dict:
    """Per few-shot size, the variant with the highest mean headline figure (ties: the faster one)."""
    best = {}
    for row in rows:
        if not row["runs_ok"] or math.isnan(row["score_mean"]):
            continue
        k = row["examples_per_class"]
        cur = best.get(k)
        if cur is None or (round(row["score_mean"], 4), -row["train_seconds_mean"]) > \
                (round(cur["score_mean"], 4), -cur["train_seconds_mean"]):
            best[k] = row
    return best


def seed_scores(records: list[RunRecord], variant: str, shots: int | str, metric: str) -> dict[int, float]:
    """seed -> the variant's figure at this few-shot size (`all`: the whole training set), completed runs only."""
    return {r.seed: r.metrics[metric] for r in records if r.ok and r.variant == variant
            and r.examples_per_class == shots and metric in r.metrics}


def margins(best: dict, rows: list[dict], records: list[RunRecord]) -> dict:
    """Per few-shot size, how far the best variant is ahead of the runner-up, paired by seed (each seed gives both
    the same subset, so the seed's own luck cancels): the runner-up, mean difference, its standard error (None
    with one seed) and the number of seeds both completed."""
    out = {}
    for k, top in best.items():
        others = [r for r in rows if r["examples_per_class"] == k and r is not top and r["runs_ok"]
                  and not math.isnan(r["score_mean"])]
        if not others:
            continue
        runner = max(others, key=lambda r: (r["score_mean"], -r["train_seconds_mean"]))
        a, b = (seed_scores(records, r["strategy"], k, top["metric"]) for r in (top, runner))
        diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
        if not diffs:
            continue
        mean, std = mean_std(diffs)
        out[k] = {"runner_up": runner["strategy"], "diff": mean, "seeds": len(diffs),
                  "se": std / math.sqrt(len(diffs)) if len(diffs) > 1 else None}
    return out


def t95(df: int) -> float:
    """Student's t, two-sided 95%, for `df` degrees of freedom (seeds - 1): with 3 seeds a paired difference must
    exceed 4.3 standard errors to count."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def margin_text(m: dict) -> str:
    """`m` (one of `margins`) in words: ahead (the paired difference's 95% interval above zero), or not told apart."""
    if m["se"] is None:
        return (f"{m['diff']:+.4f} over `{m['runner_up']}` on one seed: too few to tell them apart (use `--seeds 3` "
                "or more)")
    detail = f"{m['diff']:+.4f} paired by seed, standard error {m['se']:.4f}, {m['seeds']} seeds"
    if m["diff"] > t95(m["seeds"] - 1) * m["se"]:
        return f"ahead of `{m['runner_up']}` ({detail})"
    return f"level with `{m['runner_up']}` within noise ({detail}): more seeds would tell them apart"


def _mean_std_text(m: float, s: float) -> str:
    return "—" if m is None or math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def write_csv(rows: list[dict], path: Path) -> None:
    """compare.csv: the summary rows, floats to 6 significant digits."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})


def write_runs_csv(records: list[RunRecord], path: Path) -> None:
    """runs.csv: one line per run, failed ones with their error."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["examples_per_class", "strategy", "seed", "ok", "accuracy", "micro_f1", "macro_f1",
                    "train_seconds", "trainable_params", "peak_memory_mb", "split", "run_dir", "error"])
        for r in records:
            w.writerow([r.examples_per_class, r.variant, r.seed, r.ok, r.metrics.get("accuracy", ""),
                        r.metrics.get("micro_f1", ""), r.metrics.get("macro_f1", ""), r.train_seconds,
                        r.trainable_params, r.peak_memory_mb, r.split, r.run_dir, r.error])


def write_markdown(rows: list[dict], records: list[RunRecord], best: dict, out: Path, recipe_path: str,
                   seeds: list[int], plots: list[Path], ahead: dict | None = None) -> Path:
    """compare.md in `out`: the best strategy per few-shot size with its verdict, the summary table, the plots and
    a line per run linking its report."""
    metric = METRIC_LABELS[next((r["metric"] for r in rows if r["runs_ok"]), "accuracy")]  # a failed variant has none
    lines = [f"# textxfer compare: {recipe_path}", "",
             f"Seeds {', '.join(map(str, seeds))} (each draws its own few-shot subset, the same for every strategy); "
             f"{metric} and macro-F1 are means ± standard deviations over the seeds, on the "
             f"{rows[0]['split'] or 'evaluation'} split. Train time includes any contrastive stage and the frozen-"
             "prefix cache; peak memory is the resident memory added during the run (GPU: peak allocated).", ""]
    for k, row in best.items():
        label = "all examples" if k == "all" else f"{k} examples per class"
        lines.append(f"**Best with {label}: `{row['strategy']}`** — {metric} {_mean_std_text(row['score_mean'], row['score_std'])}"
                     f", {row['train_seconds_mean']:.1f} s" +
                     (f"; {margin_text(ahead[k])}." if ahead and k in ahead else "."))
    lines += ["", f"| examples/class | strategy | {metric} | macro-F1 | train s | trainable params | peak MB | runs |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = f"{row['runs_ok']} ok" + (f", {row['runs_failed']} failed" if row["runs_failed"] else "")
        if not row["runs_ok"]:
            lines.append(f"| {row['examples_per_class']} | {row['strategy']} | failed | — | — | — | — | {runs}: "
                         f"{row['error']} |")
            continue
        mark = " **(best)**" if best.get(row["examples_per_class"]) is row else ""
        params = f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "—"
        mem = f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] is not None else "—"
        err = f" ({row['error']})" if row["error"] else ""
        lines.append(f"| {row['examples_per_class']} | {row['strategy']}{mark} | "
                     f"{_mean_std_text(row['score_mean'], row['score_std'])} | {_mean_std_text(row['macro_f1_mean'], row['macro_f1_std'])} | "
                     f"{row['train_seconds_mean']:.1f} | {params} | {mem} | {runs}{err} |")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots]
    lines += ["", "## Runs", "", "Each run directory has its model, metrics, `report.html` and `plots/`.", ""]
    for r in records:
        rel = r.run_dir.relative_to(out).as_posix()
        if r.ok:
            name = headline(r.metrics)
            report = f" · [report]({rel}/report.html)" if (r.run_dir / "report.html").is_file() else ""
            pngs = sorted((r.run_dir / "plots").glob("*.png")) if (r.run_dir / "plots").is_dir() else []
            pics = "".join(f" · [{p.stem}]({rel}/plots/{p.name})" for p in pngs[:4])
            lines.append(f"- `{rel}`: {METRIC_LABELS[name]} {r.metrics[name]:.4f}{report}{pics}")
        else:
            lines.append(f"- `{rel}`: **failed**: {r.error} (traceback in `{rel}/error.txt`)")
    path = out / "compare.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path | None:
    """The headline figure (mean ± std over seeds) against train time, one series per few-shot size."""
    from textxfer.outputs.plots import new_figure, save_figure

    ok = [r for r in rows if r["runs_ok"] and not math.isnan(r["score_mean"])]
    if not ok:
        return None
    metric = METRIC_LABELS[ok[0]["metric"]]
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for shots in dict.fromkeys(r["examples_per_class"] for r in ok):
        sub = [r for r in ok if r["examples_per_class"] == shots]
        xs = [max(r["train_seconds_mean"], 1e-3) for r in sub]
        ys = [r["score_mean"] for r in sub]
        ax.errorbar(xs, ys, yerr=[r["score_std"] for r in sub], fmt="o", capsize=3,
                    label=f"{shots} per class" if shots != "all" else "all examples")
        for x, y, r in zip(xs, ys, sub, strict=True):
            ax.annotate(r["strategy"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log scale)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric[0].upper()}{metric[1:]} vs train time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_learning_curves(records: list[RunRecord], path: Path) -> Path | None:
    """Validation accuracy per epoch of each variant (first seed; training loss where there is no validation)."""
    from textxfer.outputs.plots import new_figure, save_figure

    firsts: dict[tuple, RunRecord] = {}
    for r in records:
        if r.ok:
            firsts.setdefault((r.shots, r.variant), r)
    curves = []
    for (shots, variant), r in firsts.items():
        try:
            hist = json.loads((r.run_dir / "history.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        evals = [e for e in hist.get("eval", []) if "accuracy" in e]
        label = f"{variant}" + (f" ({shots}/class)" if shots is not None else "")
        if evals:
            curves.append(("accuracy", label, [e["epoch"] for e in evals], [e["accuracy"] for e in evals]))
        elif hist.get("train"):
            curves.append(("loss", label, [e["epoch"] for e in hist["train"]], [e["loss"] for e in hist["train"]]))
    if not curves:
        return None
    kinds = sorted({c[0] for c in curves})
    fig = new_figure(6.4 * len(kinds), 4.2)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        for _, label, xs, ys in (c for c in curves if c[0] == kind):
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy" if kind == "accuracy" else "training loss")
        ax.set_title("Learning curves" + ("" if kind == "accuracy" else " (no validation split)"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
