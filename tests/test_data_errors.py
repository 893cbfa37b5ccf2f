"""Bad input: every case exits `textxfer data check` with code 2 and a message naming the file, row/column and fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from textxfer.cli.main import cli
from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.splits import load_splits

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOOD = "text,label\n" + "\n".join([f"good text {i},pos" for i in range(6)] + [f"bad text {i},neg" for i in range(6)])


def run_check(tmp_path: Path, data: dict) -> tuple[int, str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": "nobody/no-model"}, "data": data}))
    result = CliRunner().invoke(cli, ["data", "check", str(recipe)])
    return result.exit_code, result.output


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(p)


def jsonl(rows: list[dict]) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


# (name, files {name: content}, data keys (file names are replaced by paths), expected regex in the message)
CASES = [
    ("empty file", {"e.csv": ""}, {"train": "e.csv"}, r"e\.csv is empty"),
    ("blank file", {"b.tsv": "\n \n"}, {"train": "b.tsv"}, r"b\.tsv is empty"),
    ("header only", {"h.csv": "text,label\n"}, {"train": "h.csv"}, r"h\.csv has a header \(text, label\) but no rows"),
    ("header only json", {"h.json": "[]"}, {"train": "h.json"}, r"h\.json holds no records"),
    ("missing text", {"m.csv": GOOD + "\n,pos\n  ,neg\n"}, {"train": "m.csv"},
     r"m\.csv: 2 row\(s\) with a missing text or label: .*m\.csv, row 13: no text \(column `text`\); .*row 14.*"
     r"skip_bad_rows"),
    ("missing label", {"m.csv": GOOD + "\nlonely text,\n"}, {"train": "m.csv"},
     r"m\.csv, row 13: no label \(column `label` is empty\).*skip_bad_rows: true"),
    ("short row", {"s.tsv": "text\tlabel\nfine\tpos\nshort\n"}, {"train": "s.tsv"},
     r"s\.tsv, row 2: no label \(column `label` is empty\)"),
    ("null label json", {"n.jsonl": jsonl([{"text": "a", "label": "x"}, {"text": "b", "label": None}])},
     {"train": "n.jsonl"}, r"n\.jsonl, line 2: no label \(column `label` is empty\)"),
    ("NaN label csv", {"n.csv": GOOD + "\nsome text,NaN\n"}, {"train": "n.csv"},
     r"n\.csv, row 13: no label \(column `label` holds 'NaN'\)"),
    ("float labels", {"f.csv": "text,score\na,0.25\nb,0.75\nc,1\n"}, {"train": "f.csv", "label_column": "score"},
     r"f\.csv, row 1: the label column `score` holds the non-integer number '0\.25'.*bin them"),
    ("float labels json", {"f.jsonl": jsonl([{"text": "a", "label": 1}, {"text": "b", "label": 0.5}])},
     {"train": "f.jsonl"}, r"f\.jsonl, line 2: the label column `label` holds the non-integer number 0\.5"),
    ("mixed types json", {"x.jsonl": jsonl([{"text": "a", "label": 1}, {"text": "b", "label": 0},
                                             {"text": "c", "label": "pos"}])},
     {"train": "x.jsonl"}, r"x\.jsonl: the label column `label` mixes integer ids and names \('1' at line 1, "
                           r"'pos' at line 3\).*data\.labels"),
    ("mixed types csv", {"x.csv": "text,label\na,0\nb,1\nc,positive\n"}, {"train": "x.csv"},
     r"mixes integer ids and names \('0' at row 1, 'positive' at row 3\)"),
    ("list label single", {"l.jsonl": jsonl([{"text": "a", "label": ["x", "y"]}])}, {"train": "l.jsonl"},
     r"l\.jsonl, line 1: the label `label` is a list.*multi_label: true"),
    ("index list single", {"g.tsv": "a\t1\nb\t0,1\nc\t0\n"},
     {"train": "g.tsv", "header": False, "text_column": 0, "label_column": 1},
     r"g\.tsv, row 2: the label '0,1' looks like several labels.*multi_label: true"),
    ("multilabel index out of range", {"g.tsv": "a\t1\nb\t0,7\nc\t0\n", "labels.txt": "x\ny\n"},
     {"train": "g.tsv", "header": False, "text_column": 0, "label_column": 1, "multi_label": True,
      "labels": "labels.txt"},
     r"g\.tsv, row 2: label index 7 is out of range: `data\.labels` has 2 labels \(ids 0\.\.1\)"),
    ("text not text json", {"t.jsonl": jsonl([{"text": "fine", "label": "a"}, {"text": 42, "label": "b"}])},
     {"train": "t.jsonl"}, r"t\.jsonl, line 2: the text column `text`.*holds int 42, not text"),
    ("text column of numbers", {"t.csv": "text,label\n1,pos\n2.5,neg\n3,pos\n"}, {"train": "t.csv"},
     r"t\.csv: the text column `text` \(recipe key `data\.text_column`\) holds only numbers \(e\.g\. '1' at row 1\)"),
    ("swapped columns", {"t.csv": "id,label,text\n1,pos,hello\n2,neg,bye\n"},
     {"train": "t.csv", "text_column": "id"}, r"t\.csv: the text column `id`.*only numbers.*swap"),
    ("unknown format", {"d.xlsx": b"PK\x03\x04binary"}, {"train": "d.xlsx"},
     r"d\.xlsx: unknown format \(extension `\.xlsx`\).*data\.format"),
    ("binary as csv", {"d.dat": b"PK\x03\x04\x00\x00binary"}, {"train": "d.dat", "format": "csv"},
     r"d\.dat is binary, not text"),
    ("bad json", {"d.json": '{"text": "a", "label": "b"}\n{"text": "c", "label": "d"}\n'}, {"train": "d.json"},
     r"d\.json, line 2: not valid JSON.*format: jsonl"),
    ("bad jsonl line", {"d.jsonl": '{"text": "a", "label": "b"}\n{"text": oops}\n'}, {"train": "d.jsonl"},
     r"d\.jsonl, line 2: not valid JSON"),
    ("missing column", {"d.csv": "sentence,label\na,b\n"}, {"train": "d.csv"},
     r"d\.csv has no column `text` \(recipe key `data\.text_column`\)\. Columns that exist: sentence, label"),
    ("column number too high", {"d.tsv": "a\tb\nc\td\n"}, {"train": "d.tsv", "header": False, "text_column": 0,
                                                          "label_column": 5},
     r"d\.tsv has no column `5`.*numbered 0\.\.1"),
    ("missing file", {}, {"train": "nope.csv"}, r"nope\.csv does not exist"),
    ("unseen validation class", {"t.csv": GOOD, "v.csv": "text,label\na,pos\nb,neu\n", "labels.txt":
                                 "neg\nneu\npos\n"},
     {"train": "t.csv", "validation": "v.csv", "labels": "labels.txt"},
     r"validation data has classes that never occur in train: 'neu' \(1 row\(s\), first at .*v\.csv, row 2\)"),
    ("unknown validation label", {"t.csv": GOOD, "v.csv": "text,label\na,pos\nb,neu\n"},
     {"train": "t.csv", "validation": "v.csv"}, r"v\.csv, row 2: label 'neu' does not occur in the training data"),
    ("few-shot beyond", {"t.csv": GOOD}, {"train": "t.csv", "validation": "t.csv", "examples_per_class": 7},
     r"examples_per_class` is 7.*'neg' has 6, 'pos' has 6.*at most 6"),
    ("pattern mismatch", {"t.csv": GOOD}, {"train": "t.csv", "label_pattern": "^(x+)"},
     r"t\.csv, row 1: `data\.label_pattern` '\^\(x\+\)' does not match the label 'pos'"),
    ("parser error", {"d.csv": 'text,label\n"unclosed,pos\nb,neg\n'}, {"train": "d.csv"},
     r"d\.csv could not be read as csv.*quoting"),
    ("splits leave nothing", {"t.csv": GOOD}, {"train": "t.csv", "validation_split": 0.5, "test_split": 0.5},
     r"leave nothing to train on"),
]


@pytest.mark.parametrize("name,files,data,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_clear_message(tmp_path, name, files, data, pattern):
    paths = {f: write(tmp_path, f, c) for f, c in files.items()}
    data = {k: (str(tmp_path / v) if isinstance(v, str) and (v in paths or k in ("train", "validation")) else v)
            for k, v in data.items()}
    code, out = run_check(tmp_path, data)
    assert code == 2, out
    assert out.startswith("error: ")
    assert re.search(pattern, out, flags=re.S), out


def test_skip_bad_rows_warns_and_names_them(tmp_path):
    path = write(tmp_path, "m.csv", GOOD + "\n,pos\nlonely,\nok text,neg\n")
    s = load_splits(DataConfig(train=path, skip_bad_rows=True), seed=0)
    assert len(s.train) + len(s.validation) == 13
    assert s.info["train"]["skipped_rows"] == 2 and s.info["train"]["rows_read"] == 15
    assert any("skipped 2 row(s)" in n and "row 13: no text" in n and "row 14: no label" in n for n in s.notes)


def test_declared_label_named_none_is_not_missing(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,None\nb,some\nc,None\nd,some\n")
    s = load_splits(DataConfig(train=path, labels=["None", "some"], validation_split=0.5), seed=0)
    assert s.labels == ["None", "some"]


def test_mixed_ids_and_names_allowed_when_declared(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,0\nb,other\nc,0\nd,other\n")
    s = load_splits(DataConfig(train=path, labels=["0", "other"], validation_split=0.5), seed=0)
    assert s.labels == ["0", "other"]


def test_bad_config_values():
    with pytest.raises(UserError, match="max_train_examples` must be at least 1"):
        load_splits(DataConfig(train="x.csv", max_train_examples=0), seed=0)
    with pytest.raises(UserError, match="either `data.label_pattern` or `data.label_level`"):
        from textxfer.data.labels import _label_transform

        _label_transform(DataConfig(label_pattern="x", label_level="coarse"))
