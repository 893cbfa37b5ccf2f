"""Run directories written before the package was laid out in layers (textxfer 0.1, flat modules) still load,
predict, evaluate, report and get a model card; their recipe still reads. The fixture is such a run (a tiny random
BERT, strategy head, trained in fp32), committed as it was written (less its plots and report page)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import textxfer
from textxfer.cli.main import cli
from textxfer.config.reading import load_recipe

OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "run-0.1-flat-layout"


def test_an_old_run_predicts_what_it_predicted_then():
    rows = [json.loads(line) for line in (OLD_RUN / "predictions" / "validation.jsonl").read_text().splitlines()]
    clf = textxfer.load(OLD_RUN)
    probs = clf.probabilities([r["text"] for r in rows])
    assert [clf.labels[int(np.argmax(p))] for p in probs] == [r["pred"] for r in rows]
    assert np.allclose(probs, np.array([r["probs"] for r in rows]), atol=1e-5)  # fp32 both, rounded to 6 digits


def test_an_old_run_evaluates_to_its_metrics(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(OLD_RUN), "--data", str(OLD_RUN / "validation.csv"), "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((OLD_RUN / "metrics.json").read_text())["validation"]
    assert json.loads(result.stdout)["accuracy"] == saved["accuracy"]


def test_an_old_run_reports_and_gets_a_card(tmp_path):
    from textxfer.outputs.card import model_card

    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file()
    assert "text-classification" in model_card(run)


def test_an_old_runs_recipe_still_reads():
    recipe = load_recipe(OLD_RUN / "recipe.yaml")
    assert recipe.strategy.name == "head" and recipe.training.mixed_precision == "no"

