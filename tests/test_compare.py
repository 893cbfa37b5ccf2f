"""`textxfer compare`: variants on the same data and seeds, a table (markdown + CSV), plots, the best named; a
failing variant is reported and the others complete; unknown strategies are refused; the frozen-prefix disk
cache is shared between runs that freeze the same part.

Precision: the numbers checked exactly (means, standard deviations, paired differences, t quantiles) are float64
arithmetic on given scores; the runs train at the suite's precision but only their presence and order are checked."""

from __future__ import annotations

import csv

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_recipe

from textxfer.cli.main import cli
from textxfer.core.errors import UserError
from textxfer.tools.compare import parse_shots, parse_strategies
from textxfer.tools.compare_runs import variant_recipe
from textxfer.tools.compare_tables import summarise


def _recipe_file(tiny_models, tiny_data, tmp_path, **over):
    data = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "unused", training__epochs=1,
                       training__learning_rate=1e-2, training__checkpoint_every=None, **over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_compare_table_plots_best_and_a_failing_variant(tiny_models, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    recipe = _recipe_file(tiny_models, tiny_data, tmp_path, training__cache="auto")
    out = tmp_path / "cmp"
    # LoRA on a layer name the model does not have: that variant fails in the middle of its set-up
    result = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "head,lora,freeze", "--seeds", "2",
                                      "--examples-per-class", "6", "--output-dir", str(out),
                                      "--set", "strategy.lora.target_modules=[no_such_linear]"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["strategy"] for r in rows] == ["head", "lora", "freeze"]
    by = {r["strategy"]: r for r in rows}
    assert by["head"]["runs_ok"] == "2" and by["freeze"]["runs_ok"] == "2"
    assert by["lora"]["runs_ok"] == "0" and "no_such_linear" in by["lora"]["error"]
    for r in (by["head"], by["freeze"]):
        assert 0 <= float(r["accuracy_mean"]) <= 1 and float(r["accuracy_std"]) >= 0
        assert float(r["train_seconds_mean"]) > 0 and int(r["trainable_params"]) > 0
        assert r["peak_memory_mb"] != ""
    assert int(by["head"]["trainable_params"]) < int(by["freeze"]["trainable_params"])
    md = (out / "compare.md").read_text()
    assert "**Best with 6 examples per class:" in md and "| 6 | lora | failed |" in md
    assert "![accuracy_vs_time](plots/accuracy_vs_time.png)" in md and "report.html" in md
    assert (out / "plots" / "accuracy_vs_time.png").stat().st_size > 1000
    assert (out / "plots" / "learning_curves.png").stat().st_size > 1000
    assert "best (6 per class):" in result.output and "paired by seed" in result.output  # against the runner-up
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs) == 6 and {r["seed"] for r in runs} == {"0", "1"}
    assert (out / "runs" / "6shot-lora-seed0" / "error.txt").is_file()
    # the two head runs freeze the same part on the same validation data: the second reads it from disk
    log = (out / "runs" / "6shot-head-seed1" / "train.log").read_text()
    assert "frozen-prefix cache: loaded" in log
    # the same few-shot subset for every variant of a seed
    a = (out / "runs" / "6shot-head-seed0" / "predictions" / "validation.jsonl").read_text()
    assert a  # predictions written
    again = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "head", "--seeds", "1",
                                     "--output-dir", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_a_comparison_whose_every_run_failed_exits_2(tiny_models, tiny_data, tmp_path):
    """A script must not read a table of failures as success."""
    recipe = _recipe_file(tiny_models, tiny_data, tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "head", "--seeds", "1",
                                      "--examples-per-class", "5000", "--output-dir", str(tmp_path / "cmp")])
    assert result.exit_code == 2, result.output
    assert "Every run of the comparison failed (1 of 1)" in result.output
    assert (tmp_path / "cmp" / "compare.md").is_file()  # the table with the errors is still written


def test_unknown_strategy_is_refused(tiny_models, tiny_data, tmp_path):
    recipe = _recipe_file(tiny_models, tiny_data, tmp_path)
    result = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "head,setfitt"])
    assert result.exit_code == 2
    assert "unknown strategy 'setfitt'" in result.output and "contrastive" in result.output
    with pytest.raises(UserError, match="whole number"):
        parse_shots("8,many")
    assert parse_shots("8,64,all") == [8, 64, None]
    assert parse_strategies("head, full,head") == ["head", "full"]


def test_variant_recipes_differ_only_in_what_trains(tiny_models, tiny_data, tmp_path):
    from textxfer.config.reading import load_recipe
    from textxfer.config.schema import to_dict

    base = to_dict(load_recipe(data=tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "x",
                                                training__contrastive={"epochs": 2}, strategy__name="freeze",
                                                strategy__freeze_layers=1)))
    head = variant_recipe(base, "head", 8, 3, tmp_path / "r")
    assert head["strategy"]["name"] == "head" and head["training"]["contrastive"] is None
    assert head["data"]["examples_per_class"] == 8 and head["training"]["seed"] == 3
    con = variant_recipe(base, "contrastive", None, 0, tmp_path / "r")
    assert con["training"]["contrastive"]["epochs"] == 2 and con["model"]["pooling"] == "mean"
    assert con["strategy"] == {**base["strategy"], "name": "freeze"}
    freeze = variant_recipe({**base, "strategy": {**base["strategy"], "freeze_layers": 0}}, "freeze", None, 0,
                            tmp_path / "r")
    assert freeze["strategy"]["freeze_layers"] == 1  # half of the 2 layers
    for v in ("head", "contrastive", "freeze"):
        load_recipe(data=variant_recipe(base, v, 8, 0, tmp_path / "r"))  # every variant is a valid recipe


def test_summary_mean_std():
    from pathlib import Path

    from textxfer.tools.compare_runs import RunRecord

    single_label = {"macro_f1": 0.4, "weighted_f1": 0.5, "macro_precision": 0.5, "macro_recall": 0.5, "loss": 1.0}
    recs = [RunRecord("head", 8, s, Path("x"), ok=True, metrics={**single_label, "accuracy": a, "micro_f1": a},
                      train_seconds=1.0 + s) for s, a in enumerate([0.5, 0.7])]
    recs.append(RunRecord("head", 8, 2, Path("x"), ok=False, error="boom"))
    (row,) = summarise(recs)
    assert row["metric"] == "accuracy"  # single-label runs report a micro-F1 too: the table still says accuracy
    assert row["accuracy_mean"] == pytest.approx(0.6) and row["accuracy_std"] == pytest.approx(0.1414, abs=1e-3)
    assert row["runs_ok"] == 2 and row["runs_failed"] == 1 and row["error"] == "boom"


def test_multi_label_variants_are_ranked_by_micro_f1(tmp_path):
    """On multi-label data `accuracy` is exact-set accuracy: the table shows, and the best strategy is chosen by,
    micro-F1 instead."""
    from textxfer.tools.compare_runs import RunRecord
    from textxfer.tools.compare_tables import best_rows, write_markdown

    def rec(variant, seed, exact, micro):
        return RunRecord(variant, 8, seed, tmp_path / f"{variant}-{seed}", ok=True, train_seconds=1.0,
                         metrics={"accuracy": exact, "micro_f1": micro, "macro_f1": micro - 0.1,
                                  "samples_f1": micro, "hamming_loss": 0.1})
    recs = [rec("head", 0, 0.30, 0.40), rec("head", 1, 0.30, 0.44),
            rec("contrastive", 0, 0.25, 0.50), rec("contrastive", 1, 0.27, 0.52)]
    rows = summarise(recs)
    assert [r["metric"] for r in rows] == ["micro_f1", "micro_f1"]
    assert rows[0]["score_mean"] == pytest.approx(0.42) and rows[0]["accuracy_mean"] == pytest.approx(0.30)
    best = best_rows(rows)
    assert best[8]["strategy"] == "contrastive"  # lower exact-set accuracy, higher micro-F1
    failed = RunRecord("lora", 8, 0, tmp_path / "lora-0", ok=False, error="boom")  # listed first: no metric of its own
    md = write_markdown(summarise([failed]) + rows, recs, best, tmp_path, "r.yaml", [0, 1], []).read_text()
    assert "| examples/class | strategy | micro-F1 | macro-F1 |" in md and "micro-F1 0.5100 ± 0.0141" in md


def test_best_is_said_ahead_only_when_the_paired_difference_is_clear(tmp_path):
    """Each seed gives every variant the same subset, so the best is compared with the runner-up seed by seed:
    'ahead' when the paired difference clears its 95% interval, 'level within noise' when the seeds disagree."""
    from textxfer.tools.compare_runs import RunRecord
    from textxfer.tools.compare_tables import best_rows, margin_text, margins, write_markdown

    def recs(scores: dict) -> list:
        return [RunRecord(v, 8, seed, tmp_path / f"{v}-{seed}", ok=True, train_seconds=1.0,
                          metrics={"accuracy": a, "macro_f1": a}) for v, accs in scores.items()
                for seed, a in enumerate(accs)]

    # freeze's seeds vary a lot, but it beats head on every one by 0.02-0.03: ahead
    clear = recs({"head": [0.60, 0.70, 0.80], "freeze": [0.63, 0.72, 0.83], "lora": [0.50, 0.50, 0.50]})
    rows = summarise(clear)
    best = best_rows(rows)
    (m,) = margins(best, rows, clear).values()
    assert best[8]["strategy"] == "freeze" and m["runner_up"] == "head" and m["seeds"] == 3
    assert m["diff"] == pytest.approx(0.0267, abs=1e-4) and m["se"] == pytest.approx(0.00333, abs=1e-4)
    assert margin_text(m).startswith("ahead of `head` (+0.0267 paired by seed, standard error 0.0033, 3 seeds")
    md = write_markdown(rows, clear, best, tmp_path, "r.yaml", [0, 1, 2], [], margins(best, rows, clear)).read_text()
    assert "**Best with 8 examples per class: `freeze`** — accuracy 0.7267 ± 0.1002, 1.0 s; ahead of `head`" in md
    # a higher mean from one lucky seed: level within noise
    noisy = recs({"head": [0.70, 0.70, 0.70], "freeze": [0.66, 0.69, 0.80]})
    rows = summarise(noisy)
    (m,) = margins(best_rows(rows), rows, noisy).values()
    assert m["runner_up"] == "head" and "level with `head` within noise" in margin_text(m)
    # head's seed 1 failed: only seed 0 pairs, and one seed cannot tell them apart
    one = recs({"head": [0.70], "freeze": [0.75, 0.80]}) + [RunRecord("head", 8, 1, tmp_path / "h1", error="boom")]
    rows = summarise(one)
    (m,) = margins(best_rows(rows), rows, one).values()
    assert m["se"] is None and m["seeds"] == 1 and "too few to tell them apart" in margin_text(m)


def test_the_verdicts_t_is_students_at_every_seed_count():
    """scipy's t: at 31 degrees of freedom it is 2.04, not the normal 1.96 (a hand table's fallback past 30)."""
    from textxfer.tools.compare_tables import margin_text, t95

    assert t95(2) == pytest.approx(4.303, abs=1e-3) and t95(31) == pytest.approx(2.040, abs=1e-3)
    # 32 seeds, a difference of 2.0 standard errors: inside t's interval (2.04), outside the normal one (1.96)
    m = {"runner_up": "head", "diff": 0.02, "se": 0.01, "seeds": 32}
    assert "level with `head` within noise" in margin_text(m)
