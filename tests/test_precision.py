"""Right on every machine: what `mixed_precision: auto` means, any number of trainings in one process whatever their
precision, bf16 runs that report what their saved model predicts, and recipe values typed by the schema."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_recipe, with_pythonpath
from safetensors.torch import load_file

from textxfer.config.reading import load_recipe
from textxfer.core import precision
from textxfer.core.errors import UserError
from textxfer.tools.train import train

# Keys of metrics.json that describe the run rather than the model (none today: all must match).
VOLATILE = ("train_seconds",)


def _recipe(tiny_models, tiny_data, out: Path, mp: str, **over) -> dict:
    return tiny_recipe(tiny_models["bert"], tiny_data, out, strategy__name="freeze", strategy__freeze_layers=1,
                       model__dropout=0.1, training__epochs=1, training__mixed_precision=mp,
                       training__checkpoint_every=None, **over)


def _result(run: Path) -> tuple[dict, dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    for key in VOLATILE:
        metrics.pop(key, None)
    return metrics, load_file(str(run / "model" / "model.safetensors"))


def _assert_same_run(a: Path, b: Path) -> None:
    (ma, wa), (mb, wb) = _result(a), _result(b)
    assert ma == mb, f"{a.name} and {b.name}: metrics differ"
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a.name} and {b.name}: weight {k} differs"


FRESH = """
import json, sys
from textxfer.tools.train import train
train(json.loads(sys.argv[1]))
"""


def _fresh_process(recipe: dict) -> None:
    env = {**os.environ, "PYTHONPATH": with_pythonpath(ROOT)}
    done = subprocess.run([sys.executable, "-c", FRESH, json.dumps(recipe)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fp32_then_bf16_then_fp32_in_one_process_equal_fresh_processes(tiny_models, tiny_data, tmp_path):
    """Exact (bit-identical weights and metrics) at each precision: a run in a process that trained before at
    another precision, or failed, computes what the same run computes in a fresh process."""
    in_process = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a host with its own setting: every run, failed or not, gives it back
    for i, mp in enumerate(["no", "bf16", "no"]):
        if i == 2:  # a failed training in between: an unknown metric is refused after the first evaluation
            with pytest.raises(UserError, match="training.metric"):
                train(_recipe(tiny_models, tiny_data, tmp_path / "failed", "bf16", training__metric="nonexistent",
                              training__threads=2))
            assert torch.get_num_threads() == 1
        out = tmp_path / f"in-process-{i}-{mp}"
        train(_recipe(tiny_models, tiny_data, out, mp, training__threads=2))
        in_process.append(out)
        assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    for mp in ("no", "bf16"):
        _fresh_process(_recipe(tiny_models, tiny_data, tmp_path / f"fresh-{mp}", mp, training__threads=2))
    _assert_same_run(in_process[0], tmp_path / "fresh-no")
    _assert_same_run(in_process[1], tmp_path / "fresh-bf16")
    _assert_same_run(in_process[2], tmp_path / "fresh-no")
    assert json.loads((in_process[1] / "run.json").read_text())["environment"]


@pytest.mark.parametrize("mp", ["no", "bf16"])
def test_saved_predictions_are_what_the_saved_model_predicts(mp, tiny_models, tiny_data, tmp_path):
    """A run's final scores and saved predictions come from the model as saved, in fp32, whatever precision it
    trained in: `textxfer.load` reproduces them to fp32 rounding (1e-5; batches are padded differently)."""
    import numpy as np

    import textxfer

    out = tmp_path / "run"
    train(_recipe(tiny_models, tiny_data, out, mp, model__pooling="mean"))
    rows = [json.loads(line) for line in open(out / "predictions" / "validation.jsonl")]
    probs = textxfer.load(out).probabilities([r["text"] for r in rows])
    assert [int(np.argmax(p)) for p in probs] == [textxfer.load(out).labels.index(r["pred"]) for r in rows]
    assert max(abs(float(p.max()) - r["confidence"]) for p, r in zip(probs, rows, strict=True)) < 1e-5


def test_full_precision_forward_undoes_accelerates_autocast_inside_the_block():
    from accelerate import Accelerator

    from textxfer.engine.setup import fresh_accelerate_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(8, 16)
    with torch.no_grad():
        reference = model(x)
    fresh_accelerate_state()
    prepared = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
    with torch.no_grad():
        autocast = prepared(x)
        with precision.full_precision_forward(prepared):
            plain = prepared(x)
        again = prepared(x)
    assert torch.equal(plain, reference)
    assert not torch.equal(autocast, reference)  # bf16 rounding: the wrapper was on
    assert torch.equal(again, autocast)  # and is back after the block
    fresh_accelerate_state()


def test_auto_resolves_by_hardware_or_by_the_switch(monkeypatch):
    monkeypatch.setenv(precision.ENV_AUTO, "bf16")
    assert precision.effective_mixed_precision("auto") == "bf16"
    monkeypatch.setenv(precision.ENV_AUTO, "no")
    assert precision.effective_mixed_precision("auto") == "no"
    assert precision.effective_mixed_precision("bf16") == "bf16"  # an explicit setting is kept
    monkeypatch.setenv(precision.ENV_AUTO, "native")
    monkeypatch.setattr(precision, "bf16_native", lambda: True)
    assert precision.effective_mixed_precision("auto") == "bf16"
    monkeypatch.setattr(precision, "bf16_native", lambda: False)
    assert precision.effective_mixed_precision("auto") == "no"
    monkeypatch.setenv(precision.ENV_AUTO, "fp8")
    with pytest.raises(UserError, match="TEXTXFER_AUTO_PRECISION is 'fp8'"):
        precision.effective_mixed_precision("auto")


def test_bf16_forced_where_it_is_emulated_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(precision, "_warned_emulated", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="textxfer"):
        precision.warn_if_emulated("no")
        assert not caplog.records
        precision.warn_if_emulated("bf16")
        precision.warn_if_emulated("bf16")
    assert len(caplog.records) == 1
    assert "emulated" in caplog.records[0].getMessage() and "training.mixed_precision" in caplog.records[0].getMessage()
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(precision, "_warned_emulated", False)
    with caplog.at_level(logging.WARNING, logger="textxfer"):
        precision.warn_if_emulated("bf16")
    assert len(caplog.records) == 1  # native: no warning


# ------------------------------------------------------------------------------------------ typed by the schema

def _minimal(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    data = "" if body.startswith("data:") else "data: {train: t.csv}\n"  # a key given twice is refused
    path.write_text("model: {name: m}\n" + data + body)
    return path


def test_yaml_words_no_off_yes_on_are_typed_by_the_schema(tmp_path):
    r = load_recipe(_minimal(tmp_path, "training: {mixed_precision: no}\n"))
    assert r.training.mixed_precision == "no"
    r = load_recipe(_minimal(tmp_path, ""), ["training.mixed_precision=no"])
    assert r.training.mixed_precision == "no"
    r = load_recipe(_minimal(tmp_path, "data: {train: t.csv, dedupe: yes, multi_label: off}\n"))
    assert r.data.dedupe is True and r.data.multi_label is False
    r = load_recipe(_minimal(tmp_path, ""), ["data.dedupe=on", "training.group_by_length=No"])
    assert r.data.dedupe is True and r.training.group_by_length is False
    r = load_recipe(_minimal(tmp_path, "data: {train: t.csv, labels: {0: no, 1: yes}}\n"))
    assert r.data.labels == {0: "no", 1: "yes"}  # label names stay what they say
    with pytest.raises(UserError, match="`data.dedupe` must be true or false, not 'maybe'"):
        load_recipe(_minimal(tmp_path, ""), ["data.dedupe=maybe"])


def test_a_tsv_recipe_on_a_comma_separated_file_says_how_it_was_read(tmp_path):
    from textxfer.data.splits import load_splits

    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(6)))
    r = load_recipe(data={"model": {"name": "m"}, "data": {"train": str(data), "format": "tsv"}})
    with pytest.raises(UserError) as e:
        load_splits(r.data, 0)
    msg = str(e.value)
    assert "read as tab-separated (`data.format: tsv`)" in msg and "look comma-separated" in msg
    assert "set `data.format: csv`" in msg and str(data) in msg


def test_loading_a_model_leaves_transformers_logging_as_it_was(tiny_models):
    from transformers.utils import logging as hf_logging

    from textxfer.backbones.load import load_classifier

    before = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_info()
        load_classifier(str(tiny_models["bert"]), ["a", "b"])
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity(before)
