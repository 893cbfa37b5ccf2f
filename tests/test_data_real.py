"""The bundled recipes on the real corpora in ../shared/data: every count in each dataset's SOURCE.txt.

Slow (real files, up to 67k rows each); skipped with a message where ../shared/data is absent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import load_script

from textxfer.config.reading import load_recipe
from textxfer.data.fingerprint import column
from textxfer.data.splits import load_splits

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA} (../shared/data)")]


@pytest.fixture(autouse=True)
def data_env(monkeypatch):
    monkeypatch.setenv("TEXTXFER_DATA", str(DATA))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def splits_of(name: str, *overrides: str):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml", list(overrides))
    return load_splits(recipe.data, recipe.training.seed)


def read_counts(s, split: str) -> tuple[int, dict]:
    return s.info[split]["rows_read"], s.info[split]["label_counts_read"]


def test_sst2_counts_and_speed():
    import datasets  # noqa: F401  (imports are not the loader's cost)
    import pandas  # noqa: F401

    started = time.process_time()  # CPU time: stable on a machine shared with other jobs
    s = splits_of("sst2", "data.max_train_examples=null")
    seconds = time.process_time() - started
    assert read_counts(s, "train") == (67349, {"negative": 29780, "positive": 37569})
    assert read_counts(s, "validation") == (872, {"negative": 428, "positive": 444})
    assert len(s.train) == 67349 and seconds < 5, f"loading SST-2 took {seconds:.1f} s of CPU"  # ~0.6 s here
    assert column(s.train, "text")[0] == "hide new secretions from the parental units"


def test_sst2_recipe_subset_used_by_other_checks():
    s = splits_of("sst2", "data.max_train_examples=256")
    counts = np.bincount(column(s.train, "label"))
    assert len(s.train) == 256 and list(counts) == [113, 143]  # 256 x 44.2% / 55.8%


def test_trec_coarse_latin1():
    s = splits_of("trec")
    assert s.labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert read_counts(s, "train") == (5452, {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835,
                                              "NUM": 896})
    assert read_counts(s, "test") == (500, {"ABBR": 9, "DESC": 138, "ENTY": 94, "HUM": 65, "LOC": 81, "NUM": 113})
    utf8 = splits_of("trec", "data.encoding=utf-8", "data.label_level=full")
    assert any("not valid UTF-8" in n and "Latin-1" in n for n in utf8.notes)
    assert len(utf8.labels) == 50
    assert sum(v > 0 for v in utf8.info["test"]["label_counts_read"].values()) == 42


def test_agnews():
    s = splits_of("agnews")
    assert read_counts(s, "train") == (10001, {"Business": 2496, "Sci/Tech": 2538, "Sports": 2458, "World": 2509})
    assert read_counts(s, "test") == (7600, {k: 1900 for k in ("Business", "Sci/Tech", "Sports", "World")})


def test_emotion():
    s = splits_of("emotion")
    assert read_counts(s, "train") == (16000, {"sadness": 4666, "joy": 5362, "love": 1304, "anger": 2159,
                                               "fear": 1937, "surprise": 572})
    assert read_counts(s, "validation") == (2000, {"sadness": 550, "joy": 704, "love": 178, "anger": 275,
                                                   "fear": 212, "surprise": 81})
    assert read_counts(s, "test") == (2000, {"sadness": 581, "joy": 695, "love": 159, "anger": 275, "fear": 224,
                                             "surprise": 66})


def test_banking77():
    s = splits_of("banking77")
    rows, counts = read_counts(s, "train")
    assert rows == 10003 and len(counts) == 77 and min(counts.values()) == 35 and max(counts.values()) == 187
    rows, counts = read_counts(s, "test")
    assert rows == 3080 and set(counts.values()) == {40}
    assert s.labels[0] == "card_arrival" and len(s.validation) + len(s.train) == 10003
    assert set(column(s.validation, "label")) == set(range(77))  # stratified: every intent is validated


def test_goemotions_ekman_multilabel():
    s = splits_of("goemotions")
    assert s.multi_label and s.labels == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert (len(s.train), len(s.validation), len(s.test)) == (43410, 5426, 5427)
    hot = np.asarray(column(s.validation, "labels"), dtype=np.float32)
    assert hot.shape == (5426, 7) and hot.min() == 0 and hot.max() == 1 and (hot.sum(1) >= 1).all()


def test_goemotions_original_labels_per_row_match_source():
    d = "${TEXTXFER_DATA}/goemotions/original"
    s = splits_of("goemotions", f"data.train={d}/train.tsv", f"data.validation={d}/dev.tsv",
                  f"data.test={d}/test.tsv", f"data.labels={d}/labels.txt")
    assert len(s.labels) == 28 and s.labels[27] == "neutral"
    per_row = np.asarray(column(s.train, "labels"), dtype=np.float32).sum(1).astype(int)
    assert dict(zip(*np.unique(per_row, return_counts=True), strict=True)) == {1: 36308, 2: 6541, 3: 532, 4: 28,
                                                                              5: 1}
    assert int((np.asarray(column(s.validation, "labels")).sum(1) > 1).sum()) == 878
    assert int((np.asarray(column(s.test, "labels")).sum(1) > 1).sum()) == 837


def test_sms_spam_dedupe_then_carve():
    s = splits_of("sms-spam")
    assert read_counts(s, "train") == (5574, {"ham": 4827, "spam": 747})
    unique = len(s.train) + len(s.validation) + len(s.test)
    assert unique == 5160  # 5,171 exact-unique texts; 11 more differ only in surrounding whitespace
    texts = [set(column(d, "text")) for _, d in s.items()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_data_check_cli_prints_source_counts():
    from textxfer.cli.main import cli

    result = CliRunner().invoke(cli, ["data", "check", str(ROOT / "recipes" / "sst2.yaml")], env={
        "TEXTXFER_DATA": str(DATA), "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    out = result.output.replace(",", "")
    assert "67349 read from" in out and "872 read from" in out
    assert "truncated" in out and "%" in out
    assert os.environ["TEXTXFER_DATA"] == str(DATA)


@pytest.fixture(scope="module")
def bench_accuracy():
    return load_script("bench_accuracy")


@pytest.mark.parametrize("row, classes, eval_rows", [
    ("sst2-64", 2, 872), ("trec-64", 6, 500), ("emotion-64", 6, 2000), ("banking77-10", 77, 3080),
    ("bbc-8", 5, 667), ("agnews-8", 4, 7600), ("spam-8", 2, 1548)])
def test_bench_accuracy_rows_draw_their_subsets(bench_accuracy, row, classes, eval_rows, tmp_path):
    """Each row of scripts/bench_accuracy.py reads its data set and writes exactly `shots` training rows per class
    (the subset every system trains on) and the whole evaluation set."""
    from collections import Counter

    dataset, shots = bench_accuracy.ROWS[row]
    sub = bench_accuracy.write_subset(dataset, shots, 0, tmp_path, None)
    texts, labels = bench_accuracy.read_csv(sub["train"])
    assert len(sub["labels"]) == classes and sub["eval_rows"] == eval_rows
    assert Counter(labels) == dict.fromkeys(sub["labels"], shots)
    assert all(t.strip() for t in texts)


def test_bench_accuracy_multi_label_row_draws_its_subset(bench_accuracy, tmp_path):
    """goemotions-16: every one of the 7 labels on at least 16 of the training comments (drawn by each comment's
    rarest label), every comment with a label, and the whole test set."""
    sub = bench_accuracy.write_subset("goemotions", 16, 0, tmp_path, None)
    assert sub["multi_label"] and len(sub["labels"]) == 7 and sub["eval_rows"] == 5427
    for split, rows in (("train", 16 * 7), ("eval", 5427)):
        texts, cells = bench_accuracy.read_csv(sub[split])
        hot = bench_accuracy.label_matrix(cells, sub["labels"])
        assert len(texts) == rows and (hot.sum(1) >= 1).all()
    assert (bench_accuracy.label_matrix(bench_accuracy.read_csv(sub["train"])[1], sub["labels"]).sum(0) >= 16).all()
