"""The data layer on small files the tests write: sources, formats, labels, splits, few-shot, dedupe."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.fingerprint import column, fingerprint
from textxfer.data.sampling import stratified_split
from textxfer.data.splits import load_splits

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POS = ["a fine film", "loved every minute", "great acting", "a joy to watch", "wonderful and warm", "superb cast",
       "truly moving", "smart and funny", "a delight", "beautifully shot"]
NEG = ["a dull mess", "boring and slow", "awful script", "i walked out", "painfully bad", "a waste of time",
       "flat and lifeless", "not funny at all", "a chore", "badly acted"]


def write(tmp_path: Path, name: str, text: str | bytes, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding=encoding)
    return str(path)


def csv_text(rows: list[tuple[str, str]], header: str | None = "text,label", sep: str = ",") -> str:
    lines = [header] if header else []
    lines += [f"{t}{sep}{y}" for t, y in rows]
    return "\n".join(lines) + "\n"


def sentiment_rows() -> list[tuple[str, str]]:
    return [(t, "pos") for t in POS] + [(t, "neg") for t in NEG]


def load(**kw) -> object:
    kw.setdefault("validation_split", 0.2)
    return load_splits(DataConfig(**kw), seed=0)


# ------------------------------------------------------------------------------------------------ formats

def test_csv_with_header_and_quoted_commas(tmp_path):
    text = 'text,label\n"great, really great",pos\n"bad, really bad",neg\nfine film,pos\ndull film,neg\n'
    s = load(train=write(tmp_path, "d.csv", text), validation_split=0.5)
    assert s.labels == ["neg", "pos"]
    texts = column(s.train, "text") + column(s.validation, "text")
    assert "great, really great" in texts and len(texts) == 4
    assert s.info["train"]["rows_read"] == 4


def test_tsv_without_header_numbered_columns(tmp_path):
    path = write(tmp_path, "d.tsv", csv_text(sentiment_rows(), header=None, sep="\t"))
    s = load(train=path, header=False, text_column=0, label_column=1)
    assert len(s.train) + len(s.validation) == 20
    assert set(column(s.train, "text")) <= set(POS + NEG)


def test_header_sniffed_for_numbered_columns(tmp_path):
    with_header = write(tmp_path, "h.tsv", csv_text(sentiment_rows(), header="sentence\tsentiment", sep="\t"))
    s = load(train=with_header, text_column=0, label_column=1)
    assert len(s.train) + len(s.validation) == 20 and s.labels == ["neg", "pos"]
    assert any("header" in n for n in s.notes)
    without = write(tmp_path, "n.tsv", csv_text(sentiment_rows(), header=None, sep="\t"))
    s = load(train=without, text_column=0, label_column=1)
    assert len(s.train) + len(s.validation) == 20


def test_tsv_keeps_quote_marks_as_text(tmp_path):
    rows = [('he said "wow" twice', "pos"), ('"bad', "neg")] + sentiment_rows()
    s = load(train=write(tmp_path, "q.tsv", csv_text(rows, header="text\tlabel", sep="\t")))
    texts = column(s.train, "text") + column(s.validation, "text")
    assert 'he said "wow" twice' in texts and '"bad' in texts


def test_tsv_written_with_csv_quoting_is_read_as_written(tmp_path):
    """pandas' `to_csv(sep="\t")` wraps a field holding a quote, tab or line break in quotes and doubles its quotes:
    read as literal text, its quotes would stay in the text and a quoted line break would cut a row in two."""
    import pandas as pd

    rows = [('he said "wow" twice', "pos"), ("two\nlines", "neg")] + sentiment_rows()
    path = tmp_path / "pandas.tsv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, sep="\t", index=False)
    assert '"he said ""wow"" twice"' in path.read_text()
    s = load(train=str(path), validation_split=0.0)
    assert column(s.train, "text")[:2] == ['he said "wow" twice', "two\nlines"]
    assert any("read with `quoting: quotes`" in n for n in s.notes)
    s = load(train=str(path), validation_split=0.0, quoting="none", skip_bad_rows=True)  # as asked, quotes kept
    assert '"he said ""wow"" twice"' in column(s.train, "text")


def test_delimiter_sniffed_and_set(tmp_path):
    text = csv_text(sentiment_rows(), header="text;label", sep=";")
    s = load(train=write(tmp_path, "semi.csv", text))
    assert len(s.train) + len(s.validation) == 20 and any("sniffed" in n for n in s.notes)
    s = load(train=write(tmp_path, "semi.txt", text), format="csv", delimiter=";")
    assert s.labels == ["neg", "pos"]


def test_json_records_columns_jsonl_and_parquet(tmp_path):
    rows = [{"text": t, "label": y} for t, y in sentiment_rows()]
    paths = [write(tmp_path, "r.json", json.dumps(rows)),
             write(tmp_path, "c.json", json.dumps({"text": [r["text"] for r in rows],
                                                   "label": [r["label"] for r in rows]})),
             write(tmp_path, "w.json", json.dumps({"version": 1, "data": rows})),
             write(tmp_path, "l.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}),
                   tmp_path / "p.parquet")
    paths.append(str(tmp_path / "p.parquet"))
    prints = set()
    for path in paths:
        s = load(train=path)
        assert s.labels == ["neg", "pos"], path
        prints.add(fingerprint(s.train))
    assert len(prints) == 1  # every format gives the same examples


def test_prefix_lines_tab_and_trec_style(tmp_path):
    sms = write(tmp_path, "SMS", "\n".join(f"{y}\t{t}" for t, y in sentiment_rows()) + "\n")
    s = load(train=sms, format="prefix")
    assert s.labels == ["neg", "pos"] and len(s.train) + len(s.validation) == 20
    lines = ["DESC:manner How did serfdom develop ?", "DESC:def What is a prism ?", "NUM:dist How far is it ?",
             "NUM:date When was it built ?", "LOC:city What city is that ?", "LOC:other Where is the lake ?"] * 3
    trec = write(tmp_path, "t.label", "\n".join(lines) + "\n")
    coarse = load(train=trec, format="prefix", label_level="coarse")
    assert coarse.labels == ["DESC", "LOC", "NUM"]
    assert "How did serfdom develop ?" in column(coarse.train, "text") + column(coarse.validation, "text")
    fine = load(train=trec, format="prefix")
    assert fine.labels == ["DESC:def", "DESC:manner", "LOC:city", "LOC:other", "NUM:date", "NUM:dist"]
    pattern = load(train=trec, format="prefix", label_pattern=r"^(?P<label>[A-Z]+):")
    assert pattern.labels == coarse.labels


def test_txt_sniffs_prefix_or_explains(tmp_path):
    tabbed = write(tmp_path, "a.txt", "\n".join(f"{y}\t{t}" for t, y in sentiment_rows()))
    s = load(train=tabbed)
    assert s.labels == ["neg", "pos"] and any("sniffed" in n for n in s.notes)
    plain = write(tmp_path, "b.txt", "\n".join(POS))
    with pytest.raises(UserError, match=r"plain text.*\{label: file\}"):
        load(train=plain)


def test_per_class_files_and_folders(tmp_path):
    pos = write(tmp_path, "pos.txt", "\n".join(POS) + "\n\n")
    neg = write(tmp_path, "neg.txt", "\n".join(NEG))
    s = load(train={"pos": pos, "neg": neg})
    assert s.labels == ["neg", "pos"] and len(s.train) + len(s.validation) == 20
    for i, t in enumerate(POS):
        write(tmp_path, f"tree/positive/{i}.txt", t)
    for i, t in enumerate(NEG):
        write(tmp_path, f"tree/negative/{i}.txt", t)
    s = load(train=str(tmp_path / "tree"))
    assert s.labels == ["negative", "positive"] and len(s.train) + len(s.validation) == 20
    s = load(train={"good": str(tmp_path / "tree/positive"), "bad": str(tmp_path / "tree/negative")})
    assert s.labels == ["bad", "good"]


def test_latin1_fallback_is_reported(tmp_path):
    rows = [("café au lait", "pos")] + sentiment_rows()
    path = write(tmp_path, "l1.csv", csv_text(rows), encoding="latin-1")
    s = load(train=path)
    assert any("not valid UTF-8" in n and "Latin-1" in n and "line 2" in n for n in s.notes)
    assert "café au lait" in column(s.train, "text") + column(s.validation, "text")
    quiet = load(train=path, encoding="latin-1")
    assert not any("UTF-8" in n for n in quiet.notes)


def test_wrong_explicit_encoding_names_line(tmp_path):
    path = write(tmp_path, "u.csv", csv_text([("naïve", "pos")] + sentiment_rows()))
    with pytest.raises(UserError, match=r"line 2.*ascii"):
        load(train=path, encoding="ascii")


def test_text_pair_column(tmp_path):
    rows = ["premise,hypothesis,label"] + [f"p{i},h{i},{'yes' if i % 2 else 'no'}" for i in range(10)]
    s = load(train=write(tmp_path, "pair.csv", "\n".join(rows)), text_column="premise",
             text_pair_column="hypothesis")
    assert s.train.column_names == ["text", "text_pair", "label"]
    assert all(p == "h" + t[1:] for t, p in zip(column(s.train, "text"), column(s.train, "text_pair"), strict=True))


def test_hub_dataset_class_names(monkeypatch):
    import datasets

    calls = []

    def fake_load(repo, name=None, split=None, revision=None):
        calls.append((repo, name, split, revision))
        feats = datasets.Features({"sentence": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=["negative", "positive"])})
        return datasets.Dataset.from_dict({"sentence": POS + NEG, "label": [1] * 10 + [0] * 10}, features=feats)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    s = load(train="hub:org/sst", validation="hub:org/sst:dev[:50%]", text_column="sentence", hub_config="default",
             hub_revision="abc")
    assert s.labels == ["negative", "positive"]
    assert calls == [("org/sst", "default", "train", "abc"), ("org/sst", "default", "dev[:50%]", "abc")]
    assert Counter(column(s.train, "label")) == {0: 10, 1: 10}
    assert s.sources["validation"] == "hub:org/sst:dev[:50%]"
    by_number = load(train="hub:org/sst", text_column=0, label_column=1)  # columns by position work too
    assert by_number.labels == ["negative", "positive"]


def test_hub_offline_is_a_user_error():
    with pytest.raises(UserError, match=r"Hub dataset `nobody/no-such-set`.*network"):
        load(train="hub:nobody/no-such-set")


# ------------------------------------------------------------------------------------------------ labels

def test_label_order_list_mapping_and_indices(tmp_path):
    path = write(tmp_path, "d.csv", csv_text([(t, "1") for t in POS] + [(t, "0") for t in NEG]))
    assert load(train=path).labels == ["0", "1"]
    s = load(train=path, labels={0: "negative", 1: "positive"})
    assert s.labels == ["negative", "positive"]
    assert Counter(column(s.train, "label")) + Counter(column(s.validation, "label")) == {0: 10, 1: 10}
    s = load(train=path, labels=["negative", "positive"])  # integers index into a list of names
    assert s.labels == ["negative", "positive"]
    names = write(tmp_path, "labels.txt", "negative\npositive\n")
    assert load(train=path, labels=names).labels == ["negative", "positive"]
    text_labels = write(tmp_path, "t.csv", csv_text(sentiment_rows()))
    fixed = load(train=text_labels, labels=write(tmp_path, "order.json", '["pos", "neg"]'))
    assert fixed.labels == ["pos", "neg"] and column(fixed.train, "label")[0] in (0, 1)
    merged = load(train=text_labels, labels={"pos": "opinion", "neg": "opinion"}, validation_split=0.1)
    assert merged.labels == ["opinion"]


def test_labels_differing_only_in_case_are_said(tmp_path):
    rows = [(f"text {i}", label) for i, label in enumerate(["neg", "Neg", "pos", "POS", "pos", "neg"] * 3)]
    s = load(train=write(tmp_path, "t.csv", csv_text(rows)), validation_split=0.0)
    assert s.labels == ["Neg", "POS", "neg", "pos"]
    said = [n for n in s.notes if "differ only in case" in n]
    assert len(said) == 1 and "'Neg', 'neg'" in said[0] and "'POS', 'pos'" in said[0] and "data.labels" in said[0]


def test_train_texts_also_in_test_are_said_without_dedupe(tmp_path):
    rows = sentiment_rows()
    test = [rows[0], (rows[1][0], "neg" if rows[1][1] == "pos" else "pos"), ("a new text", "pos")]
    s = load(train=write(tmp_path, "t.csv", csv_text(rows)), test=write(tmp_path, "e.csv", csv_text(test)),
             validation_split=0.0)
    said = [n for n in s.notes if "also occur in test" in n]
    assert len(said) == 1 and said[0].startswith("train: 2 text(s) also occur in test, 1 of them with another label")
    assert "data.dedupe: true" in said[0]
    quiet = load(train=write(tmp_path, "t.csv", csv_text(rows)), test=write(tmp_path, "e.csv", csv_text(test)),
                 validation_split=0.0, dedupe=True)
    assert not any("optimistic" in n for n in quiet.notes)


def test_leaked_rows_that_repeat_a_text_are_counted_as_rows_and_texts(tmp_path):
    rows = sentiment_rows()
    train = rows + [rows[0], rows[0]]  # one leaked text, three times in train
    s = load(train=write(tmp_path, "t.csv", csv_text(train)), test=write(tmp_path, "e.csv", csv_text(rows[:1])),
             validation_split=0.0)
    assert any(n.startswith("train: 3 rows (1 distinct text) also occur in test") for n in s.notes), s.notes


def test_a_class_with_a_single_training_example_is_said(tmp_path):
    rows = sentiment_rows() + [("an odd one", "pso")]
    s = load(train=write(tmp_path, "t.csv", csv_text(rows)), validation_split=0.0)
    said = [n for n in s.notes if "single example" in n]
    assert len(said) == 1 and "'pso'" in said[0]


def test_a_validation_file_without_a_class_of_train_is_said(tmp_path):
    rows = sentiment_rows()
    s = load(train=write(tmp_path, "t.csv", csv_text(rows)), validation=write(tmp_path, "v.csv", csv_text(rows[:3])))
    said = [n for n in s.notes if n.startswith("validation has no example of 1 label(s) that train has: neg.")]
    assert len(said) == 1 and "data.validation_split" in said[0]
    assert not any("after subsetting" in n for n in s.notes)


def test_index_out_of_range_single_label(tmp_path):
    path = write(tmp_path, "d.csv", csv_text([(t, "1") for t in POS] + [(t, "0") for t in NEG] + [("odd", "2")]))
    with pytest.raises(UserError, match=r"d\.csv, row 21: label index 2 is out of range.*2 labels"):
        load(train=path, labels=["negative", "positive"])


def test_unknown_label_in_validation_names_value_and_row(tmp_path):
    train = write(tmp_path, "train.csv", csv_text(sentiment_rows()))
    val = write(tmp_path, "val.csv", csv_text([("ok", "pos"), ("meh", "neutral")]))
    with pytest.raises(UserError, match=r"val\.csv, row 2: label 'neutral' does not occur in the training data"):
        load(train=train, validation=val)


def test_integral_float_labels_are_ids(tmp_path):
    rows = [{"text": t, "label": 1.0} for t in POS] + [{"text": t, "label": 0.0} for t in NEG]
    s = load(train=write(tmp_path, "f.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert s.labels == ["0", "1"] and any("floats" in n for n in s.notes)


# ------------------------------------------------------------------------------------------------ splits

def test_stratified_carving_keeps_proportions_and_is_seeded(tmp_path):
    rows = [(f"text {i}", "a") for i in range(80)] + [(f"text b{i}", "b") for i in range(20)]
    path = write(tmp_path, "d.csv", csv_text(rows))
    s = load(train=path, validation_split=0.1, test_split=0.2)
    assert (len(s.train), len(s.validation), len(s.test)) == (70, 10, 20)
    assert Counter(column(s.test, "label")) == {0: 16, 1: 4}
    assert Counter(column(s.validation, "label")) == {0: 8, 1: 2}
    again = load(train=path, validation_split=0.1, test_split=0.2)
    assert fingerprint(again.validation) == fingerprint(s.validation)
    other = load_splits(DataConfig(train=path, validation_split=0.1, test_split=0.2), seed=1)
    assert fingerprint(other.validation) != fingerprint(s.validation)
    assert s.info["validation"]["source"] == "carved from train"


def test_stratified_split_function():
    keep, carved = stratified_split([0] * 50 + [1] * 10 + [2], 0.2, seed=3)
    assert len(carved) == 12 and sorted(keep + carved) == list(range(61))


def test_max_train_examples_is_stratified_and_exact(tmp_path):
    rows = [(f"a{i}", "a") for i in range(300)] + [(f"b{i}", "b") for i in range(100)] + \
           [(f"c{i}", "c") for i in range(3)]
    path = write(tmp_path, "d.csv", csv_text(rows))
    s = load(train=path, validation=path, max_train_examples=40)
    counts = Counter(column(s.train, "label"))
    assert len(s.train) == 40 and counts[0] == 29 and counts[1] == 10 and counts[2] == 1
    assert fingerprint(load(train=path, validation=path, max_train_examples=40).train) == fingerprint(s.train)


def test_examples_per_class(tmp_path):
    rows = [(f"a{i}", "a") for i in range(30)] + [(f"b{i}", "b") for i in range(12)]
    path = write(tmp_path, "d.csv", csv_text(rows))
    s = load(train=path, validation=path, examples_per_class=8)
    assert Counter(column(s.train, "label")) == {0: 8, 1: 8}
    with pytest.raises(UserError, match=r"examples_per_class` is 13.*'b' has 12.*at most 12"):
        load(train=path, validation=path, examples_per_class=13)


def test_dedupe_and_leakage(tmp_path):
    rows = sentiment_rows() + [(POS[0], "pos"), (POS[1], "neg"), (" " + NEG[0] + " ", "neg")]
    train = write(tmp_path, "train.csv", csv_text(rows))
    val = write(tmp_path, "val.csv", csv_text([(POS[2], "pos"), (NEG[3], "neg"), ("brand new", "pos")]))
    kept = load(train=train, validation=val)
    assert len(kept.train) == 23  # without dedupe nothing is dropped
    s = load(train=train, validation=val, dedupe=True)
    assert len(s.train) == 18 and len(s.validation) == 3
    assert any("dropped 3 duplicate" in n and "1 of them with a different label" in n for n in s.notes)
    assert any("dropped 2 text(s) that also occur in validation" in n for n in s.notes)
    assert s.info["train"]["rows_read"] == 23


def test_dedupe_before_carving(tmp_path):
    rows = sentiment_rows() * 3
    s = load(train=write(tmp_path, "d.csv", csv_text(rows)), dedupe=True, validation_split=0.2, test_split=0.2)
    seen = [set(column(d, "text")) for _, d in s.items()]
    assert sum(len(x) for x in seen) == 20 and not (seen[0] & seen[1]) and not (seen[0] & seen[2])


# ------------------------------------------------------------------------------------------------ multi-label

def test_multilabel_index_lists_goemotions_style(tmp_path):
    lines = [f"comment {i}\t{ids}\tid{i}" for i, ids in enumerate(["0", "1,2", "2", "0,2", "1"] * 4)]
    path = write(tmp_path, "go.tsv", "\n".join(lines) + "\n")
    names = write(tmp_path, "labels.txt", "anger\njoy\nneutral")
    s = load(train=path, validation=path, format="tsv", header=False, text_column=0, label_column=1,
             multi_label=True, labels=names)
    assert s.multi_label and s.labels == ["anger", "joy", "neutral"]
    assert "label" not in s.train.column_names
    assert s.train.features["labels"].feature.dtype == "float32"
    assert column(s.train, "labels")[:2] == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]


def test_multilabel_lists_and_delimited_names(tmp_path):
    rows = [{"text": f"t{i}", "tags": tags} for i, tags in enumerate([["x"], ["x", "y"], [], ["z"]] * 3)]
    s = load(train=write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows)), label_column="tags",
             multi_label=True, validation_split=0.25)
    assert s.labels == ["x", "y", "z"]
    hot = np.array(column(s.train, "labels") + column(s.validation, "labels"))
    assert hot.shape == (12, 3) and hot.sum() == 12 and (hot.sum(1) == 0).sum() == 3
    text = "text,tags\n" + "\n".join(f"t{i},{t}" for i, t in enumerate(["sports|news", "news", "tech"] * 4))
    s = load(train=write(tmp_path, "d.csv", text), label_column="tags", multi_label=True, label_delimiter="|")
    assert s.labels == ["news", "sports", "tech"]


def test_a_multilabel_csv_row_without_labels_says_how_to_write_none(tmp_path):
    text = "text,tags\n" + "\n".join(f"t{i},{t}" for i, t in enumerate(["sports|news", "news", ""] * 4))
    with pytest.raises(UserError, match=r"row\(s\) with a missing text or label.*an empty list `\[\]` in JSON Lines"):
        load(train=write(tmp_path, "d.csv", text), label_column="tags", multi_label=True, label_delimiter="|")


def test_a_blank_line_inside_a_labels_file_is_refused(tmp_path):
    lines = [f"c{i}\t{ids}" for i, ids in enumerate(["0", "1", "2"] * 4)]
    path = write(tmp_path, "go.tsv", "\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"labels.txt, line 2: blank, between label names"):
        load(train=path, format="tsv", header=False, text_column=0, label_column=1,
             labels=write(tmp_path, "labels.txt", "anger\n\njoy\nneutral\n"))
    s = load(train=path, format="tsv", header=False, text_column=0, label_column=1,
             labels=write(tmp_path, "labels.txt", "anger\njoy\nneutral\n\n"))  # blank lines at the end are fine
    assert s.labels == ["anger", "joy", "neutral"]


def test_multilabel_carving_and_few_shot(tmp_path):
    lines = [f"c{i}\t{ids}" for i, ids in enumerate(["0", "0,1", "1", "2"] * 10)]
    path = write(tmp_path, "go.tsv", "\n".join(lines))
    s = load(train=path, header=False, text_column=0, label_column=1, multi_label=True, labels=["a", "b", "c"],
             validation_split=0.2, examples_per_class=5)
    assert len(s.validation) == 8 and len(s.train) == 15


def test_the_per_class_draw_refuses_a_class_without_examples():
    """Single-label: every named class must give `examples_per_class` rows, none included; multi-label rows count
    under their rarest label, so a label may be no row's stratum and is not refused."""
    from textxfer.data.sampling import per_class_subset

    with pytest.raises(UserError, match="'c' has 0"):
        per_class_subset([0, 0, 1, 1], 1, 0, ["a", "b", "c"])
    assert len(per_class_subset([0, 0, 1, 1], 1, 0, ["a", "b", "c"], multi=True)) == 2
