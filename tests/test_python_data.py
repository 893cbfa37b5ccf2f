"""Data from Python: `textxfer.train(recipe, train=df, validation=..., test=...)` with a pandas DataFrame or a
`datasets.Dataset` is read as a file with the same rows is (same splits, same metrics), recorded in run.json with
its fingerprint, and checked again on resume.

Tiny random BERT, `head` strategy, fp32: the file run and the in-memory runs must agree exactly.
Precision: fp32, pinned in SETTINGS, exact. Where the data come from changes what is read, not how it is
computed, so the runs compared compute the same ops in the same order; that bf16 runs of the same inputs agree to
the bit as well is test_core's test_seeded_runs_are_identical, at the suite's precision.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, make_tiny_checkpoint, tiny_recipe, write_tiny_dataset
from datasets import Dataset, DatasetDict

from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError
from textxfer.data.memory import in_memory
from textxfer.data.splits import load_splits
from textxfer.engine import checkpoint
from textxfer.tools.train import train

# a carved test split too: carving and stratification run on the in-memory rows as on the file's
SETTINGS = dict(strategy__name="head", training__epochs=2, training__mixed_precision="no", data__test_split=0.25)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("python-data")
    model = make_tiny_checkpoint("bert", base / "bert")
    files = write_tiny_dataset(base / "data")
    frames = {split: pd.read_csv(path) for split, path in files.items()}
    return base, model, files, frames


def file_recipe(setup, out: Path, **over) -> dict:
    base, model, files, _ = setup
    return tiny_recipe(model, files, out, **{**SETTINGS, **over})


def memory_recipe(setup, out: Path, **over) -> dict:
    """The same recipe with no `data.train` / `data.validation`: the data comes from Python."""
    recipe = file_recipe(setup, out, **over)
    del recipe["data"]["train"], recipe["data"]["validation"]
    return recipe


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


@pytest.fixture(scope="module")
def csv_run(setup) -> Path:
    out = setup[0] / "csv"
    train(file_recipe(setup, out))
    return out


@pytest.fixture(scope="module")
def frame_run(setup) -> Path:
    out = setup[0] / "frame"
    frames = setup[3]
    train(memory_recipe(setup, out), train=frames["train"], validation=frames["validation"])
    return out


def test_a_dataframe_and_a_dataset_give_the_metrics_of_the_same_rows_in_csv_files(setup, csv_run, frame_run):
    frames = setup[3]
    dataset_run = setup[0] / "dataset"
    train(memory_recipe(setup, dataset_run), train=Dataset.from_pandas(frames["train"]),
          validation=Dataset.from_pandas(frames["validation"]))
    expected = read(csv_run, "metrics.json")
    assert read(frame_run, "metrics.json") == expected
    assert read(dataset_run, "metrics.json") == expected
    files = read(csv_run, "run.json")["data"]
    for run, kind in ((frame_run, "pandas.DataFrame"), (dataset_run, "datasets.Dataset")):
        data = read(run, "run.json")["data"]
        assert {s: d["fingerprint"] for s, d in data.items()} == {s: d["fingerprint"] for s, d in files.items()}
        assert data["test"]["source"] == "carved from train"
        for split, rows in (("train", 48), ("validation", 24)):
            record = data[split]["in_memory"]
            assert record["type"] == kind and record["argument"] == f"{split}=" and record["rows"] == rows
            assert record["columns"] == ["text", "label"]
        saved = yaml.safe_load((run / "recipe.yaml").read_text())["data"]
        assert saved["train"] == f"<in-memory {kind}, 48 rows, fingerprint {data['train']['in_memory']['fingerprint']}>"
    # the same rows: the same fingerprint, as a DataFrame or a Dataset, and in another process
    frame_data = read(frame_run, "run.json")["data"]
    assert frame_data["train"]["in_memory"]["fingerprint"] == \
        read(dataset_run, "run.json")["data"]["train"]["in_memory"]["fingerprint"]
    other = subprocess.run(
        [sys.executable, "-c", "import sys, pandas; from textxfer.data.memory import in_memory; "
         "print(in_memory('train', pandas.read_csv(sys.argv[1])).fingerprint)", str(setup[2]["train"])],
        capture_output=True, text=True, check=True, cwd=ROOT)
    assert other.stdout.strip() == frame_data["train"]["in_memory"]["fingerprint"]
    changed = frames["train"].copy()
    changed.loc[0, "text"] = "good good film"
    assert in_memory("train", changed).fingerprint != frame_data["train"]["in_memory"]["fingerprint"]


def test_sentence_pairs_multi_label_and_class_labels_read_as_from_files(setup, tmp_path):
    rows = [("good film", "great plot", ["pos"]), ("bad film", "poor actor", ["neg"]),
            ("good ball", "sad goal", ["pos", "sport", "neg"]), ("the goal", "a ball", ["sport"])] * 4
    frame = pd.DataFrame({"question": [r[0] for r in rows], "answer": [r[1] for r in rows],
                          "tags": [r[2] for r in rows]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a, "tags": t}) + "\n" for q, a, t in rows))
    recipe = memory_recipe(setup, tmp_path / "run", data__text_column="question", data__text_pair_column="answer",
                           data__label_column="tags", data__multi_label=True, data__validation_split=0.25,
                           data__test_split=0.0, training__threshold=0.5)
    cfg = load_recipe(data={**recipe, "data": {**recipe["data"], "train": str(path)}}).data
    from_file = load_splits(cfg, 0)
    from_frame = load_splits(cfg, 0, {"train": in_memory("train", frame)})
    assert from_frame.multi_label and from_frame.labels == from_file.labels == ["neg", "pos", "sport"]
    for split in ("train", "validation"):
        assert getattr(from_frame, split)[:] == getattr(from_file, split)[:]
    assert "text_pair" in from_frame.train.column_names
    # end to end: a sentence-pair, multi-label DataFrame trains and the model records the pair column
    result = train(recipe, train=frame)
    assert "micro_f1" in result.metrics["validation"]
    assert read(result.output_dir, "run.json")["data"]["train"]["in_memory"]["columns"] == ["question", "answer", "tags"]
    # a Dataset's ClassLabel names fix the label order, as for a Hub dataset
    frames = setup[3]
    encoded = Dataset.from_pandas(frames["train"]).class_encode_column("label")
    cfg = load_recipe(data=memory_recipe(setup, tmp_path / "x"), in_memory={"train": "<in-memory x>"}).data
    splits = load_splits(cfg, 0, {"train": in_memory("train", encoded)})
    assert splits.labels == ["neg", "pos", "sport"]


def test_bad_columns_and_rows_name_the_dataframe(setup, tmp_path):
    frames = setup[3]
    recipe = memory_recipe(setup, tmp_path / "run")
    with pytest.raises(UserError) as e:
        train(recipe, train=frames["train"].rename(columns={"label": "y"}))
    assert "train DataFrame has no column `label` (recipe key `data.label_column`)" in str(e.value)
    assert "Columns that exist: text, y" in str(e.value) and "header" not in str(e.value)
    bad = frames["train"].copy()
    bad.loc[2, "label"] = None
    with pytest.raises(UserError, match=r"train DataFrame, row 3 \(index 2\): no label \(column `label` is empty\)"):
        train(recipe, train=bad)
    unknown = frames["validation"].copy()
    unknown.loc[4, "label"] = "other"
    with pytest.raises(UserError, match=r"validation DataFrame, row 5 \(index 4\): label 'other' does not occur"):
        train(recipe, train=frames["train"], validation=unknown)
    numbers = Dataset.from_dict({"text": [1, 2, 3], "label": ["a", "b", "a"]})
    with pytest.raises(UserError, match=r"train Dataset.*text column `text`.*holds int"):
        train(recipe, train=numbers)


def test_other_types_and_missing_train_data_are_refused(setup, tmp_path):
    recipe = memory_recipe(setup, tmp_path / "run")
    frame = setup[3]["train"]
    for value, hint in (([["good film", "pos"]], "pandas.DataFrame({"), (str(setup[2]["train"]), "data.train"),
                        (DatasetDict({"train": Dataset.from_pandas(frame)}), "train=dd['train']")):
        with pytest.raises(UserError) as e:
            train(recipe, train=value)
        assert "`train=` is a " in str(e.value) and "give a pandas.DataFrame or a datasets.Dataset" in str(e.value)
        assert hint in str(e.value)
    with pytest.raises(UserError, match=r"`test=` is a numpy.ndarray"):
        train(recipe, train=frame, test=frame.to_numpy())
    with pytest.raises(UserError, match=r"Recipe key `data.train` is missing.*train=df"):
        train(recipe)
    with pytest.raises(UserError, match="no rows"):
        train(recipe, train=frame.iloc[:0])
    with pytest.raises(UserError, match="text recipes for now"):
        train(memory_recipe(setup, tmp_path / "image", model__task="image"), train=frame)


def test_resume_needs_the_same_data_again(setup, frame_run, tmp_path):
    frames = setup[3]
    ckpt = checkpoint.complete_checkpoints(frame_run / "checkpoints")[0]
    recipe = memory_recipe(setup, frame_run)
    changed = frames["train"].copy()
    changed.loc[0, "text"] = "good good film"
    for data in (changed, frames["train"].iloc[:-1]):
        with pytest.raises(UserError, match="data differ from the data the run trained on"):
            train(recipe, resume=ckpt, output_dir=tmp_path / "changed", train=data, validation=frames["validation"])
    with pytest.raises(UserError, match=r"`data.train` was given from Python \(<in-memory pandas.DataFrame"):
        train(frame_run / "recipe.yaml", resume=ckpt, output_dir=tmp_path / "no-data")
    again = train(recipe, resume=ckpt, output_dir=tmp_path / "same", train=frames["train"],
                  validation=frames["validation"])
    assert again.metrics["test"] == read(frame_run, "metrics.json")["test"]
