"""`textxfer predict --output`: streamed chunk by chunk, in input order, in every format, resumable after a kill,
over several processes, with progress lines and bad rows named.

Precision: fp32 (the saved model, or its fp32 export); streamed and whole-input predictions are compared exactly
on labels and to 1e-6 on scores (chunking changes only which texts share a padded batch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import tiny_recipe, with_pythonpath, write_tiny_dataset

import textxfer
from textxfer.core.errors import UserError
from textxfer.outputs.onnx_export import export_run
from textxfer.tools import predict as predict_module
from textxfer.tools.predict import predict_stream

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["good", "great", "bad", "awful", "goal", "ball", "the", "movie", "was", "very", "plot", "sad"]


def texts_of(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 9)) + f" {i}" for i in range(n)]


def write_csv(path: Path, texts: list[str]) -> Path:
    path.write_text("text,other\n" + "".join(f'"{t}",x\n' for t in texts))
    return path


@pytest.fixture(scope="module")
def model(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("stream")
    data = write_tiny_dataset(base / "data")
    textxfer.train(tiny_recipe(tiny_models["bert"], data, base / "run", training__epochs=6,
                               training__learning_rate=5e-3))
    export_run(base / "run", base / "onnx")
    return base / "run", base / "onnx"


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix in (".csv", ".tsv"):
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("which", ["run", "export"])
def test_streamed_output_is_the_whole_inputs_prediction_in_order(model, tmp_path, suffix, which):
    folder = model[0] if which == "run" else model[1]
    texts = texts_of(23)
    source = write_csv(tmp_path / "in.csv", texts)
    out = tmp_path / f"out{suffix}"
    assert predict_stream(str(folder), [str(source)], str(out), chunk_rows=5) == 23
    rows = read_output(out)
    want = textxfer.load(folder).predict(texts)
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == [w[0]["label"] for w in want]
    assert [float(r["score"]) for r in rows] == pytest.approx([w[0]["score"] for w in want], abs=1e-6)
    assert not Path(str(out) + ".partial").exists() and not Path(str(out) + ".partial.json").exists()


def test_several_inputs_of_every_kind_are_read_in_turn(model, tmp_path):
    texts = texts_of(12)
    write_csv(tmp_path / "a.csv", texts[:3])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n\n" for t in texts[3:6]))
    pq.write_table(pa.table({"text": texts[6:9]}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("\n".join(texts[9:]) + "\n\n")
    (tmp_path / "e.tsv").write_text("id\ttext\n1\tgood\n")
    sources = [str(tmp_path / n) for n in ("a.csv", "b.jsonl", "c.parquet", "d.txt", "e.tsv")]
    predict_stream(str(model[1]), sources, str(tmp_path / "out.jsonl"), chunk_rows=4)
    assert [r["text"] for r in read_output(tmp_path / "out.jsonl")] == texts + ["good"]


def test_reading_stays_one_chunk_ahead_of_writing(model, tmp_path, monkeypatch):
    """Bounded memory: when the first chunk is written, at most one chunk of input has been read."""
    from textxfer.tools.predict_inputs import Inputs
    from textxfer.tools.predict_outputs import Writer

    pulled = []
    real_records, real_write = Inputs.records, Writer.write

    def counting_records(self):
        for row in real_records(self):
            pulled.append(1)
            yield row

    seen = []
    monkeypatch.setattr(Inputs, "records", counting_records)
    monkeypatch.setattr(Writer, "write", lambda self, rows: (seen.append(len(pulled)), real_write(self, rows)))
    predict_stream(str(model[1]), [str(write_csv(tmp_path / "in.csv", texts_of(40)))], str(tmp_path / "o.jsonl"),
                   chunk_rows=8)
    assert seen[:3] == [8, 16, 24] and len(pulled) == 40


def stop_at_chunk(monkeypatch, number: int):
    """Make the prediction stop (as a Ctrl-C would) when it reaches chunk `number`; returns the real function."""
    real = predict_module.predict_chunk
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(predict_module, "predict_chunk", failing)
    return real


def test_an_interrupted_prediction_resumes_where_it_stopped(model, tmp_path, monkeypatch):
    """Stopped after two chunks: no output that looks complete, a partial file and its record; bytes written
    after the last record are dropped; the rerun predicts only the rest; every row once, in order."""
    texts = texts_of(30)
    source = str(write_csv(tmp_path / "in.csv", texts))
    out = tmp_path / "out.jsonl"
    real = stop_at_chunk(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        predict_stream(str(model[1]), [source], str(out), chunk_rows=7)
    partial, record = Path(str(out) + ".partial"), Path(str(out) + ".partial.json")
    assert not out.exists() and partial.is_file()
    assert json.loads(record.read_text())["rows"] == 14 and len(partial.read_text().splitlines()) == 14
    with open(partial, "a") as f:  # killed in the middle of writing a chunk
        f.write('{"text": "half a ro')
    monkeypatch.setattr(predict_module, "predict_chunk", real)
    said = []
    assert predict_stream(str(model[1]), [source], str(out), chunk_rows=7, say=said.append) == 16
    assert said[0].startswith("resuming: 14 rows already predicted")
    rows = read_output(out)
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == [w[0]["label"] for w in textxfer.load(model[1]).predict(texts)]
    assert not partial.exists() and not record.exists()


def test_a_changed_input_starts_over(model, tmp_path, monkeypatch):
    source = write_csv(tmp_path / "in.csv", texts_of(10))
    out = tmp_path / "out.parquet"
    monkeypatch.setattr(predict_module, "predict_chunk", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        predict_stream(str(model[1]), [str(source)], str(out), chunk_rows=4)
    monkeypatch.undo()
    write_csv(source, texts_of(11))
    said = []
    assert predict_stream(str(model[1]), [str(source)], str(out), chunk_rows=4, say=said.append) == 11
    assert not any(s.startswith("resuming") for s in said) and len(read_output(out)) == 11


def test_kill_9_then_the_same_command_resumes(model, tmp_path):
    """The CLI killed with SIGKILL mid-run; the same command finishes the job with every row once, in order."""
    texts = texts_of(30_000)
    source = write_csv(tmp_path / "in.csv", texts)
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "textxfer", "predict", str(model[1]), "--input", str(source), "--output", str(out)]
    env = dict(os.environ, PYTHONPATH=with_pythonpath(ROOT))
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = Path(str(out) + ".partial.json")
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if record.is_file() and json.loads(record.read_text() or "{}").get("rows", 0) > 0:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists(), "killed before the end: the output must not look complete"
    done = json.loads(record.read_text())["rows"]
    assert 0 < done < len(texts)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {done:,} rows" in again.stderr
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == texts


def test_several_processes_give_the_same_output(model, tmp_path):
    texts = texts_of(50)
    source = str(write_csv(tmp_path / "in.csv", texts))
    predict_stream(str(model[1]), [source], str(tmp_path / "one.jsonl"), chunk_rows=6)
    predict_stream(str(model[1]), [source], str(tmp_path / "two.jsonl"), chunk_rows=6, num_processes=2)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()


def test_progress_lines_in_a_log(model, tmp_path, monkeypatch):
    monkeypatch.setattr("textxfer.core.progress.LOG_MIN_SECONDS", 0.0)  # a line at every 10% of this quick run
    said = []
    predict_stream(str(model[1]), [str(write_csv(tmp_path / "in.csv", texts_of(100)))], str(tmp_path / "o.csv"),
                   chunk_rows=10, say=said.append)
    progress = [s for s in said if s.startswith("predict: ")]
    assert progress[0].startswith("predict: 10% (10 of ~100 rows),") and "rows/s" in progress[0]
    assert progress[0].endswith(" left") and len(progress) == 9
    assert said[-1] == f"predicted 100 rows into {tmp_path / 'o.csv'}"


def test_stdin_streams_line_by_line(model):
    texts = texts_of(5)
    result = CliRunner().invoke(__import__("textxfer.cli.main", fromlist=["cli"]).cli,
                                ["predict", str(model[1])], input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts


def test_a_model_trained_again_in_the_same_folder_starts_over(model, tmp_path, monkeypatch):
    """The resume record holds the model's files: predictions of two different models are never joined."""
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(model[1], folder)
    source = write_csv(tmp_path / "in.csv", texts_of(10))
    out = tmp_path / "out.jsonl"
    stop_at_chunk(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        predict_stream(str(folder), [str(source)], str(out), chunk_rows=4)
    monkeypatch.undo()
    onnx = next(folder.glob("*.onnx"))
    os.utime(onnx, ns=(onnx.stat().st_atime_ns, onnx.stat().st_mtime_ns + 10**9))  # as a new training would
    said = []
    assert predict_stream(str(folder), [str(source)], str(out), chunk_rows=4, say=said.append) == 10
    assert not any(s.startswith("resuming") for s in said)


def test_an_output_that_is_an_input_or_exists_is_refused(model, tmp_path):
    source = write_csv(tmp_path / "in.csv", texts_of(3))
    before = source.read_text()
    with pytest.raises(UserError, match=r"--output .*in.csv is also an --input"):
        predict_stream(str(model[1]), [str(source)], str(source))
    assert source.read_text() == before
    out = tmp_path / "kept.jsonl"
    out.write_text("IMPORTANT\n")
    with pytest.raises(UserError, match=r"kept.jsonl exists. Pass --overwrite"):
        predict_stream(str(model[1]), [str(source)], str(out))
    assert out.read_text() == "IMPORTANT\n"
    assert predict_stream(str(model[1]), [str(source)], str(out), overwrite=True) == 3
    assert len(read_output(out)) == 3


def test_an_output_that_cannot_be_written_is_a_clear_error(model, tmp_path):
    source = write_csv(tmp_path / "in.csv", texts_of(3))
    with pytest.raises(UserError, match=r"Cannot write --output .*in.csv/o.jsonl"):
        predict_stream(str(model[1]), [str(source)], str(source / "o.jsonl"))
    with pytest.raises(UserError, match=r"is a folder; give a file name in it"):
        predict_stream(str(model[1]), [str(source)], str(tmp_path))


def test_inputs_are_decoded_as_training_decodes_them(model, tmp_path):
    """A BOM is not part of the first column's name; a file that is not UTF-8 is read as Latin-1, said once; stdin
    falls back line by line."""
    (tmp_path / "bom.csv").write_bytes("\ufefftext\ngood film\n".encode("utf-8"))
    (tmp_path / "latin.csv").write_bytes("text\ncafé was great\nfine\n".encode("latin-1"))
    (tmp_path / "latin.txt").write_bytes("crème brûlée\n".encode("latin-1"))
    said = []
    predict_stream(str(model[1]), [str(tmp_path / n) for n in ("bom.csv", "latin.csv", "latin.txt")],
                   str(tmp_path / "o.jsonl"), say=said.append)
    assert [r["text"] for r in read_output(tmp_path / "o.jsonl")] == ["good film", "café was great", "fine",
                                                                      "crème brûlée"]
    assert sum("is not valid UTF-8" in s and "Latin-1" in s for s in said) == 2
    result = CliRunner().invoke(__import__("textxfer.cli.main", fromlist=["cli"]).cli, ["predict", str(model[1])],
                                input=b"good film\n" + "café\n".encode("latin-1"))
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["good film", "café"]
    assert "stdin, line 2: byte 0xe9 is not UTF-8" in result.stderr


def test_tsv_quote_marks_are_read_as_training_reads_them(model, tmp_path):
    """A GLUE-style TSV's quote marks are text: a text that opens with one does not swallow the rows after it. A
    TSV that pandas wrote (quoted fields, doubled quotes) is read as quoted, as training reads it."""
    import pandas as pd

    (tmp_path / "glue.tsv").write_text('text\tlabel\n"bad start\tneg\nsecond\tpos\nthird "quoted" one\tpos\n')
    texts = ['he said "hi"', "two\nlines", "plain"]
    pd.DataFrame({"text": texts, "label": ["a", "b", "c"]}).to_csv(tmp_path / "pandas.tsv", sep="\t", index=False)
    said = []
    predict_stream(str(model[1]), [str(tmp_path / "glue.tsv"), str(tmp_path / "pandas.tsv")],
                   str(tmp_path / "o.jsonl"), say=said.append)
    assert [r["text"] for r in read_output(tmp_path / "o.jsonl")] == ['"bad start', "second", 'third "quoted" one',
                                                                      *texts]
    assert [s for s in said if "read as quoted" in s] == [f"{tmp_path / 'pandas.tsv'}: tab-separated, with fields "
                                                          "wrapped in double quotes and their inner quotes doubled, "
                                                          "as CSV writers quote: read as quoted, as training reads it"]


@pytest.mark.parametrize("out_name", ["o.jsonl", "o.csv", "o.parquet"])
def test_kept_columns_are_copied_into_each_output_row(model, tmp_path, out_name):
    """--keep-column: an id (and a gold label, renamed beside the predicted one) travels with each row, from every
    input kind into every output format, and over several processes."""
    (tmp_path / "a.csv").write_text('id,text,label\n7,good film,pos\n8,"bad, awful",neg\n')
    (tmp_path / "b.jsonl").write_text('{"id": 9, "text": "goal", "label": "sport"}\n')
    pq.write_table(pa.table({"text": ["sad plot"], "id": ["p1"], "label": ["neg"]}), tmp_path / "c.parquet")
    said = []
    sources = [str(tmp_path / n) for n in ("a.csv", "b.jsonl", "c.parquet")]
    predict_stream(str(model[1]), sources, str(tmp_path / out_name), keep_columns=["id", "label"], say=said.append,
                   num_processes=2 if out_name == "o.parquet" else 1)
    rows = read_output(tmp_path / out_name)
    assert list(rows[0])[:3] == ["id", "input_label", "text"]
    ids = [r["id"] for r in rows]
    assert ids == (["7", "8", 9, "p1"] if out_name == "o.jsonl" else ["7", "8", "9", "p1"])  # JSON keeps JSON types
    assert [r["input_label"] for r in rows] == ["pos", "neg", "sport", "neg"]
    assert [r["text"] for r in rows] == ["good film", "bad, awful", "goal", "sad plot"]
    assert "--keep-column label: written as `input_label`, beside the output's own `label`" in said


def test_kept_columns_that_cannot_be_kept_are_refused(model, tmp_path):
    (tmp_path / "a.csv").write_text("id,text\n1,good\n")
    (tmp_path / "a.txt").write_text("good\n")
    (tmp_path / "b.jsonl").write_text('{"id": 1, "text": "good"}\n{"text": "bad"}\n')
    with pytest.raises(UserError, match=r"a.csv has no column `nope` \(--keep-column\); columns: id, text"):
        predict_stream(str(model[1]), [str(tmp_path / "a.csv")], None, keep_columns=["nope"])
    with pytest.raises(UserError, match=r"a.txt has one text per line and no columns to keep"):
        predict_stream(str(model[1]), [str(tmp_path / "a.txt")], None, keep_columns=["id"])
    with pytest.raises(UserError, match=r"b.jsonl, line 2: no key `id` to keep"):
        predict_stream(str(model[1]), [str(tmp_path / "b.jsonl")], str(tmp_path / "o.jsonl"), keep_columns=["id"])
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(UserError, match=r"each column once"):
        predict_stream(str(model[1]), [str(tmp_path / "a.csv")], None, keep_columns=["id", "id"])


def test_blank_lines_and_empty_texts_are_said(model, tmp_path):
    (tmp_path / "t.txt").write_text("good\n\n  \nbad\n")
    (tmp_path / "e.csv").write_text("id,text\n1,good\n2,\n3,   \n")
    (tmp_path / "none.jsonl").write_text("")
    said = []
    predict_stream(str(model[1]), [str(tmp_path / n) for n in ("t.txt", "e.csv", "none.jsonl")],
                   str(tmp_path / "o.jsonl"), say=said.append)
    assert any(s.endswith("none.jsonl: no rows to read") for s in said)
    assert [r["text"] for r in read_output(tmp_path / "o.jsonl")] == ["good", "bad", "good", "", "   "]
    assert any("t.txt: 2 blank line(s) skipped" in s for s in said)
    assert any("e.csv: 2 row(s) have an empty text (the first: row 3)" in s for s in said)


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "good"}\n{"text": "bad"\n', r"bad.jsonl, line 2: not valid JSON"),
    ("short.csv", "id,text\n1,good\n2\n", r"short.csv, row 3: 1 fields, but the header has 2"),
    ("long.csv", "text,id\nhello, world and more,3\n", r"long.csv, row 2: 3 fields, but the header has 2"),
    ("object.jsonl", '{"text": {"a": 1}}\n', r"object.jsonl, row 1: the text is a dict \(\{'a': 1\}\), not a string"),
    ("bool.jsonl", '{"text": true}\n', r"bool.jsonl, row 1: the text is a true/false"),
    ("other.csv", "review\ngood\n", r"other.csv has no column `text` \(--text-column\); columns: review"),
    ("nulls.jsonl", '{"text": null}\n', r"nulls.jsonl, row 1: the text is empty \(null\)"),
    ("nokey.jsonl", '{"body": "x"}\n', r"nokey.jsonl, line 1: no key `text`"),
])
def test_bad_rows_are_named_by_file_and_row(model, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        predict_stream(str(model[1]), [str(tmp_path / name)], str(tmp_path / "o.jsonl"))
    assert not (tmp_path / "o.jsonl").exists()
    assert not (tmp_path / "o.jsonl.partial").exists() and not (tmp_path / "o.jsonl.partial.json").exists()


def test_bad_options_are_refused(model, tmp_path):
    with pytest.raises(UserError, match=r"--output o.xlsx: give a .jsonl, .csv, .tsv or .parquet file"):
        predict_stream(str(model[1]), ["-"], "o.xlsx")
    with pytest.raises(UserError, match=r"Input file .*missing.csv does not exist"):
        predict_stream(str(model[1]), [str(tmp_path / "missing.csv")], None)
    with pytest.raises(UserError, match=r"--num-processes 0"):
        predict_stream(str(model[1]), ["-"], None, num_processes=0)
    with pytest.raises(UserError, match=r"--top-k 0: give 1 or more"):
        predict_stream(str(model[1]), ["-"], None, top_k=0)
    with pytest.raises(UserError, match=r"--batch-size 0: give 1 or more"):
        predict_stream(str(model[1]), ["-"], None, batch_size=0)
    (tmp_path / "t.txt").write_text("good\n")
    with pytest.raises(UserError, match=r"t.txt has one text per line, but the model reads sentence pairs"):
        predict_stream(str(model[1]), [str(tmp_path / "t.txt")], None, pair_column="hypothesis")


def test_cpu_prediction_runs_fp32_products_on_mkl_and_restores_onednn(model, monkeypatch):
    """An fp32 model on a CPU with MKL predicts with oneDNN off (no per-shape state over the batch widths), the flag
    restored after, and the same labels and scores (to 1e-5) as with oneDNN on."""
    from contextlib import nullcontext

    import numpy as np
    import torch

    from textxfer.modalities.text import predict as text_predict

    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL: prediction keeps oneDNN")
    clf = textxfer.load(model[0])
    texts = texts_of(50)
    seen = []
    forward = clf.model.forward
    monkeypatch.setattr(clf.model, "forward", lambda *a, **k: (seen.append(torch.backends.mkldnn.enabled),
                                                               forward(*a, **k))[1])
    on_mkl = clf.logits(texts, batch_size=8)
    assert seen and not any(seen) and torch.backends.mkldnn.enabled
    with monkeypatch.context() as m:
        m.setattr(text_predict, "cpu_gemm", lambda device, dtype: nullcontext())
        on_onednn = clf.logits(texts, batch_size=8)
    assert seen[-1] is True
    np.testing.assert_allclose(on_mkl, on_onednn, atol=1e-5)
    assert (on_mkl.argmax(1) == on_onednn.argmax(1)).all()
