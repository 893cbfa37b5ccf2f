"""`textxfer data check`: the report on small files, with a tiny local tokenizer and without one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from textxfer.cli.main import cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["the", "film", "was", "good", "bad", "very", "long", "short", "plot", "acting"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A checkpoint folder holding only a config and a 14-token WordPiece tokenizer (no weights needed here)."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
               vocab_size=14).save_pretrained(folder)
    return str(folder)


def make_recipe(tmp_path: Path, model: str, **data) -> Path:
    train = tmp_path / "train.csv"
    rows = ["the film was very good,pos"] * 2 + [f"the plot was good {'very ' * i}long,pos" for i in range(8)] + \
           [f"the acting was bad {'very ' * i}short,neg" for i in range(10)] + ["the film was very good,neg"]
    train.write_text("text,label\n" + "\n".join(rows) + "\n")
    val = tmp_path / "val.csv"
    val.write_text("text,label\nthe film was very good,pos\nbad plot,neg\ngood plot,pos\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": model, "max_length": 10},
                                      "data": {"train": str(train), "validation": str(val), **data}}))
    return recipe


def test_report_with_tokenizer(tmp_path, tiny_model):
    recipe = make_recipe(tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["data", "check", str(recipe)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "train: 21 rows (21 read from" in out and "validation: 3 rows (3 read from" in out
    assert "neg 11 (52.4%)  pos 10 (47.6%)" in out
    assert "duplicates   2 row(s) repeat an earlier text, 1 text(s) with differing labels" in out
    assert "overlap      1 row(s) also in train" in out
    # [CLS] + 5 words + i x "very" + [SEP] = 7 + i tokens: i >= 4 is longer than 10 -> 4 pos + 6 neg rows
    assert "truncated    10 of 21 (47.6%) longer than 10 tokens" in out
    assert "tokens       p5 7" in out


def test_json_report_and_overrides(tmp_path, tiny_model):
    recipe = make_recipe(tmp_path, tiny_model)
    result = CliRunner().invoke(cli, ["data", "check", str(recipe), "--json", "--set", "data.max_train_examples=5",
                                      "--set", "model.max_length=64"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    train = report["splits"]["train"]
    assert train["rows"] == 5 and train["rows_read"] == 21 and train["truncated"] == 0
    assert train["label_counts_read"] == {"neg": 11, "pos": 10}
    assert train["label_counts"] == {"neg": 3, "pos": 2}  # 5 x 11/21 = 2.6 and 5 x 10/21 = 2.4, largest remainder
    assert any("limited to 5" in n for n in report["notes"])


def test_report_without_tokenizer_says_so(tmp_path):
    recipe = make_recipe(tmp_path, "nobody/not-downloaded")
    result = CliRunner().invoke(cli, ["data", "check", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "tokenizer of `nobody/not-downloaded` not available offline" in result.output
    assert "truncated    unknown (no tokenizer)" in result.output
    assert "train: 21 rows" in result.output


def test_multilabel_report(tmp_path, tiny_model):
    data = tmp_path / "go.tsv"
    data.write_text("".join(f"the film {i}\t{ids}\tid{i}\n" for i, ids in enumerate(["0", "0,1", "1", "2,1,0"] * 5)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": tiny_model}, "data": {
        "train": str(data), "format": "tsv", "header": False, "text_column": 0, "label_column": 1,
        "multi_label": True, "labels": ["anger", "joy", "neutral"], "validation_split": 0.2}}))
    result = CliRunner().invoke(cli, ["data", "check", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "labels (3, multi-label): anger, joy, neutral" in result.output
    assert "labels/row   1: 8  2: 4  3: 4" in result.output


def test_bad_file_exits_2(tmp_path, tiny_model):
    recipe = make_recipe(tmp_path, tiny_model)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    result = CliRunner().invoke(cli, ["data", "check", str(recipe), "--set", f"data.train={empty}"])
    assert result.exit_code == 2
    assert "has a header (text, label) but no rows" in result.output
