"""What training read, prediction reads: a saved run scored again by `textxfer evaluate` / `predict` / `pipeline()`
reads the same tokens (the run's `model.max_length`, both texts of a pair) and so gives the run's own figures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_checkpoint, tiny_recipe

import textxfer
from textxfer.cli.main import cli
from textxfer.core.errors import UserError

VOCAB = {"pos": ["good", "great", "happy", "fine"], "neg": ["bad", "awful", "poor", "sad"],
         "sport": ["sport", "ball", "goal"]}
FILLER = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor", "ok", "news"]
MAX_LENGTH = 8  # [CLS] + 6 words + [SEP]: most texts below are longer, so truncation decides what the model sees


def _sentence(rng: random.Random, label: str, words: tuple[int, int]) -> str:
    out = [rng.choice(FILLER) for _ in range(rng.randint(*words))]
    out.insert(rng.randint(0, len(out)), rng.choice(VOCAB[label]))
    return " ".join(out)


def write_long_texts(folder: Path, seed: int = 0) -> dict[str, Path]:
    """train/validation/test CSVs of 5-13 word texts (most longer than MAX_LENGTH tokens); no text repeats."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths = {}
    for split, count in (("train", 60), ("validation", 24), ("test", 30)):
        rows = ["text,label"]
        while len(rows) <= count:
            label = list(VOCAB)[len(rows) % 3]
            text = _sentence(rng, label, (4, 12))
            if text not in seen:
                seen.add(text)
                rows.append(f"{text},{label}")
        paths[split] = folder / f"{split}.csv"
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


def write_long_pairs(folder: Path, seed: int = 1) -> dict[str, Path]:
    """Sentence pairs (premise, hypothesis): `same` when both name the same class of word, else `diff`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, str]] = set()
    paths = {}
    for split, count in (("train", 60), ("validation", 24), ("test", 30)):
        rows = ["premise,hypothesis,label"]
        while len(rows) <= count:
            a = rng.choice(list(VOCAB))
            same = len(rows) % 2 == 0
            b = a if same else rng.choice([c for c in VOCAB if c != a])
            premise, hypothesis = _sentence(rng, a, (3, 9)), _sentence(rng, b, (2, 7))
            if (premise, hypothesis) not in seen:
                seen.add((premise, hypothesis))
                rows.append(f"{premise},{hypothesis},{'same' if same else 'diff'}")
        paths[split] = folder / f"{split}.csv"
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return make_tiny_checkpoint("bert", tmp_path_factory.mktemp("parity-model") / "bert")


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _evaluate(run: Path, data: Path, *extra: str) -> dict:
    return json.loads(_invoke(["evaluate", str(run), "--data", str(data), "--json", *extra]).stdout)


def _predict(run: Path, data: Path, out: Path, *extra: str) -> list[dict]:
    _invoke(["predict", str(run), "--input", str(data), "--output", str(out), "--overwrite", *extra])
    return [json.loads(line) for line in out.read_text().splitlines()]


def _run_predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]


def _assert_same_scores(metrics: dict, again: dict) -> None:
    """The run's test figures and `textxfer evaluate`'s on the same rows: the same predictions (accuracy and
    macro-F1 exactly), and the loss up to float summation order (padding and batch composition differ).

    Precision: fp32 on both sides whatever the run trained in (its test figures come from the final fp32 evaluation,
    Loop.finish; `evaluate` loads the model in fp32), so fp32's tolerance holds for every PRECISIONS case."""
    assert again["accuracy"] == metrics["accuracy"]
    assert again["macro_f1"] == metrics["macro_f1"]
    assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-5, abs=1e-6)


# The run trains at the suite's precision (`auto`: bf16 or fp32 by mode) and, pinned, in fp32; the checks are the
# same for both because everything compared is scored in fp32 (see _assert_same_scores).
PRECISIONS = [pytest.param(None, id="precision-unpinned"), pytest.param("no", id="precision-fp32")]


def _recipe(model: Path, data: dict[str, Path], out: Path, precision: str | None, **over) -> dict:
    if precision is not None:
        over["training__mixed_precision"] = precision
    settings = {"model__max_length": MAX_LENGTH, "data__test": str(data["test"]), "training__epochs": 10,
                "training__learning_rate": 5e-3, **over}  # enough to learn: a constant model would prove nothing
    return tiny_recipe(model, data, out, **settings)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_evaluate_predict_and_pipeline_read_what_training_read(bert, tmp_path, precision):
    from transformers import AutoTokenizer, pipeline

    data = write_long_texts(tmp_path / "data")
    run = tmp_path / "run"
    textxfer.train(_recipe(bert, data, run, precision))

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    assert tokenizer.model_max_length == MAX_LENGTH
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["textxfer_max_length"] == MAX_LENGTH and "textxfer_text_pair_column" not in config
    truncated = sum(len(tokenizer(t)["input_ids"]) > MAX_LENGTH
                    for t in (r["text"] for r in _run_predictions(run)))
    assert truncated >= 10  # the limit matters on these rows

    metrics = json.loads((run / "metrics.json").read_text())["test"]
    _assert_same_scores(metrics, _evaluate(run, data["test"]))

    expected = _run_predictions(run)
    predicted = _predict(run, data["test"], tmp_path / "preds.jsonl")
    assert [p["text"] for p in predicted] == [e["text"] for e in expected]
    assert [p["label"] for p in predicted] == [e["pred"] for e in expected]
    assert textxfer.load(run).max_length == MAX_LENGTH
    longer = textxfer.load(run, max_length=512).predict([e["text"] for e in expected])
    assert [r[0]["label"] for r in longer] != [e["pred"] for e in expected]  # reading more would change answers

    plain = pipeline("text-classification", model=str(run / "model"))
    assert [p["label"] for p in plain([e["text"] for e in expected], truncation=True)] == \
        [e["pred"] for e in expected]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sentence_pair_model_is_evaluated_and_predicted_on_both_texts(bert, tmp_path, precision):
    data = write_long_pairs(tmp_path / "data")
    run = tmp_path / "run"
    textxfer.train(_recipe(bert, data, run, precision, data__text_column="premise",
                           data__text_pair_column="hypothesis"))

    config = json.loads((run / "model" / "config.json").read_text())
    assert config["textxfer_text_pair_column"] == "hypothesis" and config["textxfer_max_length"] == MAX_LENGTH
    expected = _run_predictions(run)
    assert all("text_pair" in e for e in expected)

    metrics = json.loads((run / "metrics.json").read_text())["test"]
    _assert_same_scores(metrics, _evaluate(run, data["test"], "--text-column", "premise"))  # pair column recorded
    _assert_same_scores(metrics, _evaluate(run, data["test"], "--text-column", "premise",
                                           "--pair-column", "hypothesis"))

    for extra in (["--pair-column", "hypothesis"], []):
        predicted = _predict(run, data["test"], tmp_path / "preds.jsonl", "--text-column", "premise", *extra)
        assert [(p["text"], p["text_pair"]) for p in predicted] == [(e["text"], e["text_pair"]) for e in expected]
        assert [p["label"] for p in predicted] == [e["pred"] for e in expected]

    clf = textxfer.load(run)
    assert clf.pair_column == "hypothesis"
    scores = clf.predict([e["text"] for e in expected], pairs=[e["text_pair"] for e in expected])
    assert [s[0]["label"] for s in scores] == [e["pred"] for e in expected]
    with pytest.raises(UserError, match="This model reads sentence pairs"):  # never scored on the first text alone
        clf.predict([e["text"] for e in expected])
    first_only = clf.predict([e["text"] for e in expected], pairs=[""] * len(expected))
    assert [s[0]["label"] for s in first_only] != [e["pred"] for e in expected]  # the second text matters

    from transformers import pipeline

    plain = pipeline("text-classification", model=str(run / "model"))
    pairs = [{"text": e["text"], "text_pair": e["text_pair"]} for e in expected]
    assert [p["label"] for p in plain(pairs, truncation=True)] == [e["pred"] for e in expected]


def test_pair_model_on_a_file_without_the_pair_column_names_file_column_and_option(bert, tmp_path):
    data = write_long_pairs(tmp_path / "data")
    run = tmp_path / "run"
    textxfer.train(_recipe(bert, data, run, "no", data__text_column="premise", data__text_pair_column="hypothesis",
                           training__epochs=1))
    single = tmp_path / "premises.csv"
    lines = data["test"].read_text().splitlines()
    single.write_text("\n".join(",".join(row.split(",")[::2]) for row in lines) + "\n")  # premise,label

    result = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(single), "--text-column", "premise"])
    assert result.exit_code == 2
    assert str(single) in result.output and "`hypothesis`" in result.output and "--pair-column" in result.output

    result = CliRunner().invoke(cli, ["predict", str(run), "--input", str(single), "--text-column", "premise"])
    assert result.exit_code == 2
    assert str(single) in result.output and "`hypothesis`" in result.output and "--pair-column" in result.output

    lines_file = tmp_path / "texts.txt"
    lines_file.write_text("the film was good\n")
    result = CliRunner().invoke(cli, ["predict", str(run), "--input", str(lines_file)])
    assert result.exit_code == 2 and "--pair-column" in result.output


def test_max_length_recorded_first_then_tokenizer_then_explicit(tmp_path):
    """Old model folders (no `textxfer_max_length`) load as before; an explicit `max_length=` wins."""
    from textxfer.modalities.text.predict import Classifier

    folder = make_tiny_checkpoint("bert", tmp_path / "old", with_head=True)
    assert Classifier(folder).max_length == 512  # the tokenizer names no limit: 512, as before
    assert Classifier(folder, max_length=16).max_length == 16
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "textxfer_max_length": 24}))
    assert Classifier(folder).max_length == 24
    assert Classifier(folder, max_length=16).max_length == 16
    assert Classifier(folder).pair_column is None
