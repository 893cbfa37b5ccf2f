"""`textxfer compare`: run several transfer strategies on the same data, over several seeds (and few-shot sizes),
and write one table (markdown + CSV), two plots and the name of the best strategy, with how far it is ahead of
the runner-up paired by seed.

Variants differ only in what trains (the `strategy` and the contrastive stage); data, model and optimisation
settings come from the one recipe, so the comparison is fair. Each seed draws its own few-shot subset (the same
subset for every variant) and its own head initialisation: single few-shot runs are noise, means over seeds are
not. A variant that fails is reported with its error and the others still run. Variants that freeze the same
part of the same model on the same data share the frozen-prefix disk cache (`training.cache: auto`), so only
the first computes it.

This module reads the command's arguments and drives the runs; `compare_runs` builds and trains each run,
`compare_tables` turns the runs into the tables, the verdict and the plots.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import click

from textxfer.core.errors import UserError
from textxfer.tools.compare_runs import NEEDS_UNLABELLED, VARIANTS, RunRecord, run_one, variant_recipe
from textxfer.tools.compare_tables import (
    best_rows,
    margin_text,
    margins,
    plot_accuracy_vs_time,
    plot_learning_curves,
    summarise,
    write_csv,
    write_markdown,
    write_runs_csv,
)

log = logging.getLogger("textxfer")


# ------------------------------------------------------------------------------------------ arguments

def parse_list(text: str | None, what: str) -> list[str]:
    """The items of a comma-separated option; an empty list is a UserError naming the option (`what`)."""
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise UserError(f"`{what}` is empty: give a comma-separated list.")
    return items


def parse_strategies(text: str) -> list[str]:
    """`--strategies` as variant names, duplicates dropped; an unknown name is a UserError listing the known ones."""
    names = parse_list(text, "--strategies")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in VARIANTS.items())
        raise UserError(f"`--strategies` names unknown strateg{'ies' if len(unknown) > 1 else 'y'} "
                        f"{', '.join(map(repr, unknown))}. Known: {known}.")
    return list(dict.fromkeys(names))


def parse_shots(text: str | None) -> list[int | None]:
    """`--examples-per-class` as few-shot sizes (None: the whole training set, also when the option is absent)."""
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


# ------------------------------------------------------------------------------------------ driver

def compare(recipe_path: str, strategies: list[str], seeds: list[int], shots: list[int | None],
            output_dir: Path, overrides: list[str] | None = None, overwrite: bool = False) -> dict:
    """Run every (shots, strategy, seed) and write compare.md, compare.csv, runs.csv and plots/. Python twin of
    `textxfer compare`."""
    from textxfer.config.reading import load_recipe
    from textxfer.config.schema import to_dict

    base = to_dict(load_recipe(recipe_path, list(overrides or [])))
    if not base["data"].get("unlabelled") and any(v in NEEDS_UNLABELLED for v in strategies):
        raise UserError("Variant `self-training` learns from unlabelled texts, and the recipe has no "
                        "`data.unlabelled`: add it, or pass `--set data.unlabelled=FILE`.")
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
def compare_command(recipe: str, strategies: str, seeds: int, shots: str | None, output_dir: str,
                    overrides: tuple[str, ...], overwrite: bool) -> None:
    """Train several strategies on the same data and seeds; write a table, plots and the best strategy.

    \b
    Examples:
      textxfer compare recipes/fewshot.yaml --strategies head,contrastive,full --examples-per-class 8,64
      textxfer compare recipes/sst2.yaml --strategies head,freeze,lora --seeds 2 --set training.epochs=1
    """
    from textxfer.config.reading import load_recipe

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
    failed = [r for r in result["records"] if r.error]
    if failed and len(failed) == len(result["records"]):
        raise UserError(f"Every run of the comparison failed ({len(failed)} of {len(failed)}); the first: "
                        f"{failed[0].variant} (seed {failed[0].seed}): {failed[0].error}")
