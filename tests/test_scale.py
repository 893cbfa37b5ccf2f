"""Corpora of millions (issue 30, item 4), on small generated files: a large file is read in chunks into a
memory-mapped Arrow file (here "large" is lowered to a few bytes), checked while it is read, and gives the same
splits as the whole-file reader; tokenising keeps flat arrays, not a list per example; the frozen-prefix cache is
memory-mapped from its disk copy or switched off above `training.cache_budget`, with one line saying which."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import tiny_recipe

import textxfer
from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data import stored
from textxfer.data.fingerprint import column, fingerprint
from textxfer.data.splits import load_splits

WORDS = ["good", "bad", "film", "plot", "great", "awful", "actor", "was", "very", "the"]


@pytest.fixture
def store_everything(monkeypatch, tmp_path):
    """Every file is "large": read in chunks into the store (a cache folder of this test's own)."""
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stored, "STORE_ABOVE_BYTES", 0)


def write_rows(path, rows, sep=","):
    path.write_text("text" + sep + "label\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows), encoding="utf-8")
    return str(path)


def corpus(n: int, seed: int = 0, classes=("pos", "neg", "mixed")) -> list[tuple[str, str]]:
    """Texts with duplicates (some with another label), a rare class, and varied lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = classes[i % len(classes)] if i % 50 else "rare"
        rows.append((" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))), label))
    return rows


def splits_as_lists(s) -> dict:
    return {n: (column(ds, "text"), column(ds, "label"), fingerprint(ds)) for n, ds in s.items()}


@pytest.mark.parametrize("over", [
    {"validation_split": 0.2, "test_split": 0.1},
    {"validation_split": 0.1, "examples_per_class": 5},
    {"max_train_examples": 40, "dedupe": False},
    {"labels": {"pos": "positive", "neg": "negative", "mixed": "other", "rare": "other"}},
])
def test_stored_reading_gives_the_splits_of_whole_file_reading(over, tmp_path, monkeypatch):
    """De-duplication (with labels that disagree), leakage into a given test file, stratified carving, per-class
    draws, stratified limits and label mappings: the same rows in the same order, the same fingerprints."""
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    train = write_rows(tmp_path / "train.csv", corpus(600))
    test = write_rows(tmp_path / "test.csv", corpus(80, seed=1))
    cfg = DataConfig(train=train, test=test, **over)
    whole = load_splits(cfg, seed=3)
    monkeypatch.setattr(stored, "STORE_ABOVE_BYTES", 0)
    chunked = load_splits(cfg, seed=3)
    assert chunked.train.cache_files  # memory-mapped
    assert splits_as_lists(chunked) == splits_as_lists(whole)
    assert chunked.labels == whole.labels and chunked.info == whole.info
    said = [n for n in chunked.notes if "memory-mapped file" not in n]
    assert said == whole.notes


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tsv"])
def test_every_streamed_format_reads_as_whole(fmt, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    frame = pd.DataFrame(corpus(300) + [('said "so"', "pos"), ("two\nlines", "neg")], columns=["text", "label"])
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t", index=False)
    cfg = DataConfig(train=str(path), validation_split=0.2)
    whole = load_splits(cfg, seed=0)
    monkeypatch.setattr(stored, "STORE_ABOVE_BYTES", 0)
    chunked = load_splits(cfg, seed=0)
    assert chunked.train.cache_files and splits_as_lists(chunked) == splits_as_lists(whole)


def test_a_stored_file_is_mapped_again_without_reading_it(store_everything, tmp_path, monkeypatch):
    path = write_rows(tmp_path / "train.csv", corpus(200))
    first = load_splits(DataConfig(train=path), seed=0)
    assert any("rows read into the memory-mapped file" in n for n in first.notes)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(stored, "stream_file", no_reading)
    again = load_splits(DataConfig(train=path), seed=0)
    assert any("rows mapped from the memory-mapped file" in n for n in again.notes)
    assert splits_as_lists(again) == splits_as_lists(first)
    # a changed file is read again
    write_rows(tmp_path / "train.csv", corpus(201))
    with pytest.raises(AssertionError, match="read again"):
        load_splits(DataConfig(train=path), seed=0)


def test_a_bad_row_deep_in_a_large_file_is_named_while_reading(store_everything, tmp_path, monkeypatch):
    """A missing label on data row 120,001 (the third chunk): the error names the file and row, and the chunks
    after it are never read."""
    from textxfer.data import streaming

    rows = corpus(150_000)
    rows[120_000] = ("a text without its label", "")
    path = write_rows(tmp_path / "big.csv", rows)
    chunks = []
    real = streaming.stream_file

    def counted(*args, **kwargs):
        for table in real(*args, **kwargs):
            chunks.append(len(table))
            yield table

    monkeypatch.setattr(stored, "stream_file", counted)
    with pytest.raises(UserError, match=r"big\.csv: 1 row\(s\) with a missing text or label: .*big\.csv, row 120001"):
        load_splits(DataConfig(train=path), seed=0)
    assert len(chunks) == 3  # stopped in the chunk that holds the row
    assert not list((tmp_path / "cache/data").glob("*.arrow"))  # nothing half-written is kept


def test_skipped_bad_rows_are_said_once_for_the_whole_file(store_everything, tmp_path, monkeypatch):
    from textxfer.data import streaming

    monkeypatch.setattr(streaming, "CHUNK_ROWS", 100)
    rows = corpus(500)
    for i in (10, 150, 420):
        rows[i] = (rows[i][0], "")
    path = write_rows(tmp_path / "train.csv", rows)
    s = load_splits(DataConfig(train=path, skip_bad_rows=True), seed=0)
    skipped = [n for n in s.notes if "with a missing text or label" in n]
    assert len(skipped) == 1 and "skipped 3 row(s)" in skipped[0] and "row 421" in skipped[0]
    assert s.info["train"]["rows_read"] == 500 and s.info["train"]["skipped_rows"] == 3


def test_malformed_lines_are_named_by_file_and_line(store_everything, tmp_path):
    path = tmp_path / "bad.csv"
    lines = ["text,label"] + [f"text {i},pos" for i in range(70_000)]
    lines[60_001] = "one,field,too many"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"bad\.csv could not be read as csv.*line 60002"):
        load_splits(DataConfig(train=str(path)), seed=0)
    jsonl = tmp_path / "bad.jsonl"
    records = [json.dumps({"text": f"t {i}", "label": "pos"}) for i in range(70_000)]
    records[65_000] = '{"text": "cut off'
    jsonl.write_text("\n".join(records) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl, line 65001: not valid JSON"):
        load_splits(DataConfig(train=str(jsonl)), seed=0)


def test_label_errors_name_the_first_row_holding_the_value(store_everything, tmp_path, monkeypatch):
    from textxfer.data import streaming

    monkeypatch.setattr(streaming, "CHUNK_ROWS", 100)
    train = write_rows(tmp_path / "train.csv", corpus(300))
    rows = corpus(300, seed=2)
    rows[250] = ("a text", "surprise")
    validation = write_rows(tmp_path / "validation.csv", rows)
    with pytest.raises(UserError, match=r"validation\.csv, row 251: label 'surprise' does not occur in the training"):
        load_splits(DataConfig(train=train, validation=validation), seed=0)
    mixed = corpus(300)
    mixed[230] = ("a text", "7")
    with pytest.raises(UserError, match=r"mixes integer ids and names \('7' at row 231, 'rare' at row 1\)"):
        load_splits(DataConfig(train=write_rows(tmp_path / "mixed.csv", mixed)), seed=0)


def test_latin1_fallback_is_said_with_its_line(store_everything, tmp_path):
    path = tmp_path / "train.csv"
    body = "text,label\n" + "".join(f"caf\xe9 {i},pos\n" if i == 150 else f"text {i},neg\n" for i in range(300))
    path.write_bytes(body.encode("latin-1"))
    s = load_splits(DataConfig(train=str(path)), seed=0)
    assert any("not valid UTF-8 (byte 0xe9 on line 152)" in n for n in s.notes)
    assert "caf\xe9 150" in column(s.train, "text")


def test_tokenised_split_keeps_flat_arrays_mapped_from_disk(store_everything, tmp_path, tiny_models):
    """`encode_dataset` gives the token ids the tokenizer gives the texts as lists; of a stored split they are
    views of the Arrow file written by `datasets.map` (not one Python list per example), read back on a rerun."""
    from transformers import AutoTokenizer

    from textxfer.modalities.text.batching import Collator, encode, encode_dataset

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    s = load_splits(DataConfig(train=write_rows(tmp_path / "train.csv", corpus(400))), seed=0)
    enc = encode_dataset(tok, s.train, "label", 6)
    plain = encode(tok, column(s.train, "text"), None, column(s.train, "label"), 6)
    assert len(enc) == len(plain) == len(s.train) and enc.truncated == plain.truncated > 0
    assert all(np.array_equal(a, b) for a, b in zip(enc.input_ids, plain.input_ids, strict=True))
    assert np.array_equal(enc.lengths, plain.lengths) and np.array_equal(enc.targets, plain.targets)
    values, _ = enc.input_ids.chunks[0]
    assert not values.flags.owndata  # a view of the Arrow buffer
    batch = Collator(enc, tok.pad_token_id)([0, 3])
    assert batch["input_ids"].shape[0] == 2
    again = encode_dataset(tok, s.train, "label", 6)
    assert all(np.array_equal(a, b) for a, b in zip(enc.input_ids, again.input_ids, strict=True))


def test_encode_in_slices_gives_what_one_call_gives(tiny_models, monkeypatch):
    """`encode` tokenises a list a slice at a time (memory); the ids, type ids, lengths and the count of texts
    truncation cut are those of one tokenizer call over the whole list, with and without sentence pairs."""
    from transformers import AutoTokenizer

    from textxfer.modalities.text import batching

    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    texts = [" ".join(WORDS[: i % 9 + 1]) for i in range(23)] + [" ".join(WORDS * 5)]
    pairs = [WORDS[i % len(WORDS)] for i in range(len(texts))]
    for given in (None, pairs):
        whole = tok(texts, given, truncation=True, max_length=8) if given else tok(texts, truncation=True,
                                                                                  max_length=8)
        monkeypatch.setattr(batching, "ENCODE_ROWS", 5)
        sliced = batching.encode(tok, texts, given, np.arange(len(texts)), 8)
        full = tok(texts, given)["input_ids"] if given else tok(texts)["input_ids"]
        assert len(sliced) == len(texts) and sliced.truncated == sum(len(x) > 8 for x in full) > 0
        assert [list(x) for x in sliced.input_ids] == whole["input_ids"]
        assert [list(x) for x in sliced.token_type_ids] == whole["token_type_ids"]
        assert list(sliced.lengths) == [len(x) for x in whole["input_ids"]]
        monkeypatch.setattr(batching, "ENCODE_ROWS", 10**6)
        once = batching.encode(tok, texts, given, np.arange(len(texts)), 8)
        assert once.truncated == sliced.truncated and np.array_equal(once.lengths, sliced.lengths)
    assert len(batching.encode(tok, [], None, np.zeros(0), 8)) == 0


def test_cache_budget_switches_the_cache_off_with_one_line(tiny_models, tiny_data, tmp_path, monkeypatch):
    """Precision: the suite's. Under the budget the cache is memory-mapped from its disk copy; over it the cache
    is off, and training (now through the frozen layers at every step) still runs."""
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    on = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "on", strategy__name="head", training__cache="auto")
    textxfer.train(on)
    log = (tmp_path / "on/train.log").read_text()
    assert "memory-mapped from its disk copy" in log and "frozen-prefix cache: off" not in log
    off = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "off", strategy__name="head",
                      training__cache="auto", training__cache_budget="1KB")
    result = textxfer.train(off)
    log = (tmp_path / "off/train.log").read_text()
    lines = [line for line in log.splitlines() if "frozen-prefix cache" in line]
    assert len(lines) == 1 and "frozen-prefix cache: off:" in lines[0] and "training.cache_budget (0.00 GB)" in lines[0]
    assert result.metrics["validation"]["accuracy"] >= 0


@pytest.mark.parametrize("value", ["lots", 0, "-2GB"])
def test_cache_budget_is_checked(value, tiny_models, tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "r", training__cache_budget=value)
    with pytest.raises(UserError, match="training.cache_budget"):
        textxfer.train(recipe)


def test_cache_read_from_disk_is_memory_mapped(tmp_path):
    """The disk copy of the cache comes back as views of a mapping of the file; a copy whose offsets do not fit
    its features is refused (rebuilt), never served."""
    import torch

    from textxfer.backbones.flat_features import FlatFeatures
    from textxfer.backbones.prefix_cache import FrozenPrefixCache
    from textxfer.core.tensor_files import write_safetensors

    flat = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    offsets = torch.tensor([0, 2, 3, 6])
    key = "k" * 32
    path = tmp_path / "c.safetensors"
    write_safetensors(path, {"flat": flat, "offsets": offsets,
                             "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8)})
    feats = FrozenPrefixCache._read(path, key)
    assert isinstance(feats, FlatFeatures) and len(feats) == 3
    torch.testing.assert_close(feats[2], flat[3:6], rtol=0, atol=0)
    assert feats[1].untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()
    assert FrozenPrefixCache._read(path, "another key") is None
    write_safetensors(path, {"flat": flat, "offsets": torch.tensor([0, 2, 9]),
                             "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8)})
    assert FrozenPrefixCache._read(path, key) is None


@pytest.mark.slow
def test_bench_scale_runs_end_to_end(tmp_path):
    """scripts/bench_scale.py on tiny sizes: every size in its own process, the rows and ratios written (MiniLM)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "scripts/bench_scale.py"), "--sizes", "300", "600", "--steps",
                           "3", "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench_scale.json").read_text())
    assert [r["rows_in_file"] for r in result["sizes"]] == [300, 600]
    assert all(r["steps"] == 3 and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0 for r in result["sizes"])
    assert "peak RSS minus baseline, 600 vs 300 rows" in (tmp_path / "bench_scale.txt").read_text()
