"""`textxfer compare`: run several transfer strategies on the same data, over several seeds (and few-shot sizes),
and write one table (markdown + CSV), two plots and the name of the best strategy, with how far it is ahead of
the runner-up paired by seed.

Variants differ only in what trains (the `strategy` and the contrastive stage); data, model and optimisation
settings come from the one recipe, so the comparison is fair. Each seed draws its own few-shot subset (the same
subset for every variant) and its own head initialisation: single few-shot runs are noise, means over seeds are
not. A variant that fails is reported with its error and the others still run. Variants that freeze the same
part of the same model on the same data share the frozen-prefix disk cache (`training.cache: auto`), so only
the first computes it.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import click

from textxfer.errors import UserError

log = logging.getLogger("textxfer")

VARIANTS: dict[str, str] = {
    "recipe": "the recipe as written",
    "head": "only the classifier trains on the frozen body (cached)",
    "freeze": "the upper layers and the classifier train; embeddings + lower `freeze_layers` frozen (cached)",
    "lora": "LoRA adapters on every layer plus the classifier",
    "full": "every parameter trains",
    "gradual": "the classifier, then one more layer group from the top each epoch (ULMFiT-style)",
    "contrastive": "SetFit-style contrastive tuning of the upper layers (mean pooling), then the classifier alone",
}


@dataclass
class RunRecord:
    variant: str
    shots: int | None
    seed: int
    run_dir: Path
    ok: bool = False
    error: str = ""
    metrics: dict = field(default_factory=dict)
    train_seconds: float | None = None
    trainable_params: int | None = None
    peak_memory_mb: float | None = None
    split: str = ""

    @property
    def examples_per_class(self) -> int | str:
        """The few-shot size as the tables name it: `all` for the whole training set."""
        return "all" if self.shots is None else self.shots


# ------------------------------------------------------------------------------------------ variants

def parse_list(text: str | None, what: str) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise UserError(f"`{what}` is empty: give a comma-separated list.")
    return items


def parse_strategies(text: str) -> list[str]:
    names = parse_list(text, "--strategies")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in VARIANTS.items())
        raise UserError(f"`--strategies` names unknown strateg{'ies' if len(unknown) > 1 else 'y'} "
                        f"{', '.join(map(repr, unknown))}. Known: {known}.")
    return list(dict.fromkeys(names))


def parse_shots(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    out: list[int | None] = []
    for item in parse_list(text, "--examples-per-class"):
        if item.lower() in ("all", "none"):
            out.append(None)
            continue
        try:
            k = int(item)
        except ValueError:
            raise UserError(f"`--examples-per-class` item {item!r} is not a whole number (or `all`).") from None
        if k < 1:
            raise UserError(f"`--examples-per-class` item {k} must be at least 1.")
        out.append(k)
    return list(dict.fromkeys(out))


def layer_count(recipe_dict: dict) -> int:
    """Encoder layers of the recipe's checkpoint (0 when the config does not say)."""
    from textxfer.backbones import load_config, resolve_model_name

    m = recipe_dict["model"]
    cfg = load_config(resolve_model_name(m["name"]), m.get("revision"), m.get("trust_remote_code", False))
    return int(getattr(cfg, "num_hidden_layers", 0) or 0)


def variant_recipe(base: dict, variant: str, shots: int | None, seed: int, run_dir: Path) -> dict:
    """The recipe of one run: the base recipe with the variant's strategy, the few-shot size and the seed."""
    r = copy.deepcopy(base)
    s, t = r["strategy"], r["training"]
    r["output_dir"] = str(run_dir)
    t["seed"] = seed
    if shots is not None:
        r["data"]["examples_per_class"] = shots
    r.setdefault("hub", {}).setdefault("push", {})["repo_id"] = None  # a comparison never publishes
    if variant == "recipe":
        return r
    t["contrastive"] = None
    if variant == "contrastive":
        if s["name"] not in ("freeze", "gradual") or not s.get("freeze_layers"):
            s["freeze_layers"] = max(layer_count(r) // 2, 0)
        s["name"] = "freeze"
        r["model"]["pooling"] = "mean"
        base_c = base["training"].get("contrastive")
        t["contrastive"] = copy.deepcopy(base_c) if base_c else {}
        t["contrastive"]["then"] = "head"
        return r
    if variant == "freeze" and not s.get("freeze_layers"):
        s["freeze_layers"] = max(layer_count(r) // 2, 0)
    s["name"] = variant
    if variant in ("head", "lora"):
        s["reinit_layers"] = 0
    return r


# ------------------------------------------------------------------------------------------ one run

class MemoryWatch:
    """Peak resident memory added while a run trains (sampled every 50 ms; GPU: peak allocated)."""

    def __init__(self):
        self.peak = 0
        self.base = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.megabytes = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                          else max(self.peak - self.base, 0)) / 2**20
        return False


def run_one(recipe: dict, record: RunRecord) -> RunRecord:
    """Train one variant; any failure is recorded (with the traceback in RUN_DIR/error.txt), never raised."""
    from textxfer.training import train

    record.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with MemoryWatch() as mem:
            result = train(recipe, overwrite=True, command=f"textxfer compare ({record.variant}, seed {record.seed})")
        record.peak_memory_mb = round(mem.megabytes, 1)
        metrics = result.metrics
        record.split = "test" if "test" in metrics else "validation"
        record.metrics = metrics.get(record.split) or {}
        run = json.loads((record.run_dir / "run.json").read_text())
        record.train_seconds = run.get("train_seconds")
        record.trainable_params = run.get("trainable_params")
        hist = json.loads((record.run_dir / "history.json").read_text())
        stage = hist.get("contrastive_stage") if isinstance(hist, dict) else None
        if stage:  # the body trained during the stage, then froze: count what trained at all
            record.trainable_params = (record.trainable_params or 0) + int(stage.get("body_params", 0))
        record.ok = True
    except (Exception, SystemExit) as e:  # a failing variant must not stop the others
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        record.error = f"{type(e).__name__}: {text}"[:300]
        (record.run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        log.warning(f"compare: {record.variant} (seed {record.seed}) failed: {record.error}")
    return record


# ------------------------------------------------------------------------------------------ the table

def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


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


def _fmt(m: float, s: float) -> str:
    return "—" if m is None or math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})


def write_runs_csv(records: list[RunRecord], path: Path) -> None:
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
    metric = METRIC_LABELS[next((r["metric"] for r in rows if r["runs_ok"]), "accuracy")]  # a failed variant has none
    lines = [f"# textxfer compare: {recipe_path}", "",
             f"Seeds {', '.join(map(str, seeds))} (each draws its own few-shot subset, the same for every strategy); "
             f"{metric} and macro-F1 are means ± standard deviations over the seeds, on the "
             f"{rows[0]['split'] or 'evaluation'} split. Train time includes any contrastive stage and the frozen-"
             "prefix cache; peak memory is the resident memory added during the run (GPU: peak allocated).", ""]
    for k, row in best.items():
        label = "all examples" if k == "all" else f"{k} examples per class"
        lines.append(f"**Best with {label}: `{row['strategy']}`** — {metric} {_fmt(row['score_mean'], row['score_std'])}"
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
                     f"{_fmt(row['score_mean'], row['score_std'])} | {_fmt(row['macro_f1_mean'], row['macro_f1_std'])} | "
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


# ------------------------------------------------------------------------------------------ plots

def plot_accuracy_vs_time(rows: list[dict], path: Path) -> Path | None:
    from textxfer.plots import new_figure, save_figure

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
    from textxfer.plots import new_figure, save_figure

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


# ------------------------------------------------------------------------------------------ driver

def compare(recipe_path: str, strategies: list[str], seeds: list[int], shots: list[int | None],
            output_dir: Path, overrides: list[str] | None = None, overwrite: bool = False) -> dict:
    """Run every (shots, strategy, seed) and write compare.md, compare.csv, runs.csv and plots/. Python twin of
    `textxfer compare`."""
    from textxfer.recipe import load_recipe, to_dict

    base = to_dict(load_recipe(recipe_path, list(overrides or [])))
    if (output_dir / "compare.md").is_file() and not overwrite:
        raise UserError(f"{output_dir} already holds a comparison (compare.md). Pick another `--output-dir`, or pass "
                        "`--overwrite` to replace it.")
    output_dir.mkdir(parents=True, exist_ok=True)
    records: list[RunRecord] = []
    total = len(shots) * len(strategies) * len(seeds)
    for k in shots:
        for variant in strategies:
            for seed in seeds:
                name = f"{'all' if k is None else f'{k}shot'}-{variant}-seed{seed}"
                record = RunRecord(variant, k, seed, output_dir / "runs" / name)
                log.warning(f"compare: run {len(records) + 1}/{total}: {name}")
                try:
                    recipe = variant_recipe(base, variant, k, seed, record.run_dir)
                    load_recipe(data=copy.deepcopy(recipe))  # a variant the recipe cannot express fails alone
                except UserError as e:
                    record.error = f"UserError: {e}"[:300]
                    records.append(record)
                    continue
                records.append(run_one(recipe, record))
    rows = summarise(records)
    best = best_rows(rows)
    ahead = margins(best, rows, records)
    plots = [p for p in (plot_accuracy_vs_time(rows, output_dir / "plots" / "accuracy_vs_time.png"),
                         plot_learning_curves(records, output_dir / "plots" / "learning_curves.png")) if p]
    write_csv(rows, output_dir / "compare.csv")
    write_runs_csv(records, output_dir / "runs.csv")
    md = write_markdown(rows, records, best, output_dir, recipe_path, seeds, plots, ahead)
    return {"rows": rows, "best": best, "margins": ahead, "records": records, "markdown": md}


@click.command("compare")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--strategies", default="head,freeze,lora,full,gradual", show_default=True,
              help=f"Comma-separated variants: {', '.join(VARIANTS)}.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Runs per variant (seeds recipe seed, +1, ...): each draws its own few-shot subset.")
@click.option("--examples-per-class", "shots", default=None,
              help="Comma-separated few-shot sizes, e.g. 8,64 (`all` = the whole training set). Default: as the recipe.")
@click.option("--output-dir", type=click.Path(file_okay=False), default="runs/compare", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value for every variant (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier comparison in the output directory.")
def compare_command(recipe, strategies, seeds, shots, output_dir, overrides, overwrite):
    """Train several strategies on the same data and seeds; write a table, plots and the best strategy.

    \b
    Examples:
      textxfer compare recipes/fewshot.yaml --strategies head,contrastive,full --examples-per-class 8,64
      textxfer compare recipes/sst2.yaml --strategies head,freeze,lora --seeds 2 --set training.epochs=1
    """
    from textxfer.recipe import load_recipe

    names = parse_strategies(strategies)
    sizes = parse_shots(shots)
    if seeds < 1:
        raise UserError(f"`--seeds` must be at least 1, not {seeds}.")
    first = load_recipe(recipe, list(overrides)).training.seed
    started = time.time()
    result = compare(recipe, names, [first + i for i in range(seeds)], sizes, Path(output_dir), list(overrides),
                     overwrite)
    click.echo(result["markdown"].read_text(encoding="utf-8").split("\n## Plots")[0])
    for k, row in result["best"].items():
        said = f" — {margin_text(result['margins'][k])}" if k in result["margins"] else ""
        click.echo((f"best ({k} per class): " if k != "all" else "best: ") + row["strategy"] + said)
    click.echo(f"wrote {result['markdown']} and compare.csv, runs.csv, plots/ in {time.time() - started:.0f}s")
