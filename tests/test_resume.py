"""Never lose a run: checkpoints, exact resume after SIGKILL or SIGTERM, early stopping, reproducibility.

Tiny random BERT (hidden 32, 2 layers) with dropout on, lower layer frozen and served by the frozen-prefix
cache: resume has to restore the random states, the data position and the cache key to come out identical.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import make_tiny_checkpoint, tiny_recipe, write_tiny_dataset

from textxfer.cli.main import cli
from textxfer.core.errors import UserError
from textxfer.engine import checkpoint, interruption
from textxfer.engine.loop import Loop
from textxfer.tools.train import train

# 60 examples, batch 8: 8 steps per epoch (the last batch has 4), 16 steps in 2 epochs.
SETTINGS = dict(strategy__name="freeze", strategy__freeze_layers=1, model__dropout=0.1, training__log_every=1,
                training__checkpoint_every=2, training__keep_checkpoints=1, training__learning_rate=3e-3)

# Runs `textxfer train` and pauses inside the optimizer step PAUSE_AT (after announcing it in READY).
PAUSING_CHILD = """
import os, sys, time
import textxfer.engine.loop as tr
step = tr.Loop.train_step
def train_step(self, indices):
    if self.state.progress.step == int(os.environ["PAUSE_AT"]):
        open(os.environ["READY"], "w").close()
        time.sleep(120)
    return step(self, indices)
tr.Loop.train_step = train_step
from textxfer.cli.main import main
sys.argv = ["textxfer"] + sys.argv[1:]
main()
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    model = make_tiny_checkpoint("bert", base / "bert")
    data = write_tiny_dataset(base / "data", n=60)
    return base, model, data


def recipe_for(setup, out: Path, **over) -> dict:
    base, model, data = setup
    return tiny_recipe(model, data, out, **{**SETTINGS, **over})


def write_recipe(setup, out: Path, **over) -> Path:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe_for(setup, out, **over)))
    return path


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run every resumed run must reproduce."""
    out = setup[0] / "reference"
    train(recipe_for(setup, out))
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical runs. Precision: the suite's (both runs, and a resumed run's child process, read the same
    `auto`); exact in both modes, because both runs compute the same ops in the same order and bf16's rounding is as
    deterministic as fp32's."""
    assert read(a, "metrics.json") == read(b, "metrics.json")
    assert read(a, "history.json") == read(b, "history.json")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_same_recipe_and_seed_twice_gives_identical_results(setup, reference):
    again = setup[0] / "again"
    train(recipe_for(setup, again))
    assert_same_run(reference, again)
    run = read(again, "run.json")
    assert run["git_revision"] and run["versions"]["torch"] and run["data"]["train"]["fingerprint"]
    assert (again / "recipe.yaml").is_file()


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(setup, reference, tmp_path):
    out = tmp_path / "killed"
    recipe = write_recipe(setup, out)
    ready = tmp_path / "ready"
    env = {**os.environ, "PAUSE_AT": "5", "READY": str(ready)}
    output = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, "-c", PAUSING_CHILD, "train", str(recipe)], env=env,
                             stdout=output.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not ready.exists():
        assert child.poll() is None, output.read_text()
        assert time.time() < deadline, "the training process never reached step 6"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)  # in the middle of epoch 1's 6th step; the last checkpoint is step 4
    child.wait()
    root = out / "checkpoints"
    assert [c.name for c in checkpoint.complete_checkpoints(root)] == ["step-0000004"]
    # a crash during a later save on a file system without atomic renames: both leftovers are skipped
    (root / "step-0000006").mkdir()
    (root / "step-0000006" / "model.safetensors").write_bytes(b"partial")
    (root / ".tmp-step-0000008").mkdir()
    assert not (out / "run.json").exists()

    result = CliRunner().invoke(cli, ["train", str(recipe), "--resume"])
    assert result.exit_code == 0, result.output
    log = (out / "train.log").read_text()
    assert "skipped incomplete checkpoint step-0000006" in log and "resumed from" in log
    assert_same_run(reference, out)


def test_sigterm_saves_a_checkpoint_and_resume_matches(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "terminated"
    step = Loop.train_step

    def train_step(self, indices):
        if self.state.progress.step == 2:  # during the 3rd step: it finishes, is saved, then the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, indices)

    monkeypatch.setattr(Loop, "train_step", train_step)
    with pytest.raises(SystemExit) as stopped:
        train(recipe_for(setup, out))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back
    saved = checkpoint.complete_checkpoints(out / "checkpoints")
    assert saved[-1].name == "step-0000003"
    assert checkpoint.read_state(saved[-1])["reason"] == "SIGTERM"
    monkeypatch.setattr(Loop, "train_step", step)
    train(recipe_for(setup, out), resume=True)
    assert_same_run(reference, out)


def test_resume_refuses_a_changed_model_strategy_or_data(setup, reference, tmp_path):
    ckpt = checkpoint.complete_checkpoints(reference / "checkpoints")[-1]
    changed = recipe_for(setup, tmp_path / "other", strategy__name="head", data__max_train_examples=30)
    with pytest.raises(UserError) as e:
        train(changed, resume=ckpt)
    assert "strategy.name: 'freeze' -> 'head'" in str(e.value)
    assert "data.max_train_examples: None -> 30" in str(e.value)
    with pytest.raises(UserError, match="already finished"):
        train(recipe_for(setup, reference), resume=True)
    with pytest.raises(UserError, match="no `checkpoints` folder"):
        train(recipe_for(setup, tmp_path / "never"), resume=True)


def test_an_interrupted_run_is_not_silently_restarted(setup, tmp_path):
    out = tmp_path / "unfinished"
    (out / "checkpoints" / "step-0000004").mkdir(parents=True)
    with pytest.raises(UserError, match="--resume"):
        train(recipe_for(setup, out))


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(setup, tmp_path, monkeypatch):
    out = tmp_path / "full-disk"
    real = checkpoint._save_tensors
    calls = []

    def failing(tensors, path):
        calls.append(path)
        if "step-0000004" in str(path):
            path.write_bytes(b"x" * 10)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(checkpoint, "_save_tensors", failing)
    train(recipe_for(setup, out, training__epochs=0.5))  # 4 steps: saves at 2 (fine) and 4 (disk full)
    root = out / "checkpoints"
    assert [c.name for c in root.iterdir()] == ["step-0000002"]
    assert checkpoint.problem_with(root / "step-0000002") is None
    log = (out / "train.log").read_text()
    assert "could not save checkpoint step-0000004" in log and "step-0000002 is intact" in log
    assert read(out, "run.json")["finished"] is True


def test_early_stopping_keeps_the_best_lora_model_and_tensorboard_logs(setup, tmp_path, auto_precision):
    """The saved model is the best evaluation's. Precision: the evaluations during training run at the suite's
    precision, the final one in fp32 (as the saved model predicts): equal to 1e-6 under fp32; under bf16 the
    training-time losses carry bf16's rounding of the logits (8 significant bits), so they agree to 1e-3. The
    reloaded model's probabilities against the saved predictions: fp32 against fp32 in both modes, to 1e-4."""
    tol = 1e-6 if auto_precision == "no" else 1e-3
    out = tmp_path / "lora"
    train(recipe_for(setup, out, strategy__name="lora", training__metric="loss", training__eval_every=1,
                     training__epochs=4, training__learning_rate=0.2, training__log_with="tensorboard",
                     training__early_stopping={"patience": 2}))
    metrics = read(out, "metrics.json")
    evals = read(out, "history.json")["eval"]
    stopped = metrics["stopped_early"]
    assert stopped["step"] < 32 and evals[-1]["step"] == stopped["step"]
    best = min(evals, key=lambda e: e["loss"])
    assert metrics["best"]["step"] == best["step"] < evals[-1]["step"]
    # the saved (merged) model is the best evaluation's, not the last one's
    assert metrics["validation"]["loss"] == pytest.approx(best["loss"], abs=tol)
    assert not list(out.glob(".best-weights-*"))  # the best weights' file is gone once restored
    assert metrics["validation"]["loss"] != pytest.approx(evals[-1]["loss"], abs=tol)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    rows = [json.loads(line) for line in (out / "predictions" / "validation.jsonl").read_text().splitlines()]
    with torch.inference_mode():
        probs = model(**tok([r["text"] for r in rows[:8]], padding=True, return_tensors="pt")).logits.softmax(-1)
    assert torch.allclose(probs, torch.tensor([r["probs"] for r in rows[:8]]), atol=1e-4)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"train/loss", "validation/loss", "validation/accuracy"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("validation/loss")] == [e["step"] for e in evals]


def test_rotation_keeps_the_last_k_and_the_best(tmp_path):
    root = tmp_path / "checkpoints"
    for step, value in [(2, 0.5), (4, 0.9), (6, 0.7), (8, None), (10, 0.6)]:
        c = root / f"step-{step:07d}"
        c.mkdir(parents=True)
        (c / "model.safetensors").write_bytes(b"w")
        (c / "state.json").write_text(json.dumps({"complete": True, "metric_value": value,
                                                  "files": {"model.safetensors": 1}}))
    checkpoint.rotate(root, keep=2, lower_better=False)
    assert sorted(c.name for c in root.iterdir()) == ["step-0000004", "step-0000008", "step-0000010"]
    checkpoint.rotate(root, keep=1, lower_better=True)
    assert sorted(c.name for c in root.iterdir()) == ["step-0000010"]


def test_one_ctrl_c_passed_on_twice_is_one_request_and_a_later_one_quits(monkeypatch):
    # Python's own Ctrl-C handler, as in a terminal: a background job (`pytest ... &`) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interruption.StopSignals(grace=60) as signals:
            os.kill(os.getpid(), signal.SIGINT)  # from the terminal
            os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C, passed on by torchrun's agent
            assert signals.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
        with pytest.raises(KeyboardInterrupt), interruption.StopSignals(grace=0) as signals:
            os.kill(os.getpid(), signal.SIGINT)
            assert signals.received == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)  # pressed again: quit now, without saving
    finally:
        signal.signal(signal.SIGINT, previous)
