"""Several processes train as one: real 2-process DDP (gloo, CPU) gives what one process gives, and launches that
would train alone or unsynchronised stop with a clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_tiny_checkpoint, tiny_recipe, write_tiny_dataset

from textxfer.core.errors import UserError
from textxfer.engine import distributed as launch
from textxfer.engine.batches import shard
from textxfer.engine.loop import Loop
from textxfer.engine.setup import make_accelerator
from textxfer.tools.train import train

ROOT = Path(__file__).resolve().parent.parent
# 60 examples, global batch 8: 7 full batches and one of 4 (the uneven cut); frozen lower layer + cache; no
# dropout, so that the two set-ups compute the same thing and only float summation order differs.
SETTINGS = dict(strategy__name="freeze", strategy__freeze_layers=1, model__dropout=0.0, training__log_every=1,
                training__learning_rate=3e-3, training__checkpoint_every=None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    return base, make_tiny_checkpoint("bert", base / "bert"), write_tiny_dataset(base / "data", n=60)


def recipe_file(setup, out: Path, **over) -> Path:
    base, model, data = setup
    path = base / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model, data, out, **{**SETTINGS, **over})))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


# How close 1 process x accumulation 2 and 2 processes come out, by the precision both trained in (the suite's: the
# launched processes inherit its `auto`). fp32: the same micro-batches, only the summation order of the gradients
# differs; under 1e-6 on the weights after 16 steps (measured 4e-7 freeze, 1e-8 LoRA). bf16: that change flips some of
# the activations' roundings to 8 significant bits (a step of 2**-8 ~ 0.4%), and Adam, which divides each update by
# the gradient's running size, turns a changed near-zero gradient (LoRA's A while B is still ~0) into a change of up
# to a whole step (lr 3e-3): the LoRA weights measured 1-2e-4 apart, the freeze ones 1e-7; 1e-3 is a third of one
# step. Losses under bf16: computed from bf16 logits, below 0.1 in size on this barely trained model, so a rounding
# moves each logit by < 4e-4 and a cross-entropy by at most twice that: 1e-3 (LoRA's training losses measured 2.5e-5).
# The accuracy is exact in both: no validation row's two likeliest classes lie within these differences.
CLOSE_RUNS = {"no": {"weights": 2e-5, "loss": 1e-5}, "bf16": {"weights": 1e-3, "loss": 1e-3}}


def assert_close_runs(a: Path, b: Path, precision: str) -> None:
    """Precision: `precision`, what both runs trained in; tolerances in CLOSE_RUNS."""
    tol = CLOSE_RUNS[precision]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=tol["weights"]), (k, (wa[k] - wb[k]).abs().max())
    ma, mb = read(a, "metrics.json"), read(b, "metrics.json")
    for split in ("validation",):
        assert ma[split]["accuracy"] == mb[split]["accuracy"]
        assert ma[split]["loss"] == pytest.approx(mb[split]["loss"], abs=tol["loss"])
    ha, hb = read(a, "history.json"), read(b, "history.json")
    assert [h["step"] for h in ha["train"]] == [h["step"] for h in hb["train"]] == list(range(1, 17))
    for x, y in zip(ha["train"], hb["train"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=tol["loss"])


# Two processes need two GPUs; where there is only one, this test runs its processes on the CPU (over gloo)
ONE_GPU_OR_NONE_RUNS_ON_CPU = {"CUDA_VISIBLE_DEVICES": ""} if torch.cuda.device_count() < 2 else {}


@pytest.mark.ddp
def test_two_processes_match_one_process_with_accumulation(setup, auto_precision):
    """`textxfer train --num-processes 2` (accumulation 1) and 1 process x accumulation 2: same weights (the two
    processes share the frozen-prefix cache pass).
    Precision: the suite's, to CLOSE_RUNS (fp32 2e-5; bf16 1e-3, see there)."""
    base = setup[0]
    two = base / "two"
    proc = subprocess.run([sys.executable, "-m", "textxfer", "train", str(recipe_file(setup, two)),
                           "--num-processes", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **ONE_GPU_OR_NONE_RUNS_ON_CPU})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (two / "train.log").read_text()
    assert "2 processes" in proc.stderr and "num_processes: 2" in log
    assert "shared by 2 processes" in log  # each computed half of the frozen-prefix cache; both trained on the whole
    summary = [line for line in proc.stdout.splitlines() if line.strip()]
    assert summary and len(summary) == len(set(summary))  # only process 0 prints the summary
    assert read(two, "metrics.json")["num_processes"] == 2
    run = read(two, "run.json")
    assert run["num_processes"] == 2 and "--num-processes 2" in run["command"]

    one = base / "one"  # on the same device as the two processes
    proc = subprocess.run([sys.executable, "-m", "textxfer", "train",
                           str(recipe_file(setup, one, training__gradient_accumulation_steps=2))],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **ONE_GPU_OR_NONE_RUNS_ON_CPU})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read(one, "metrics.json")["num_processes"] == 1
    assert_close_runs(one, two, auto_precision)


@pytest.mark.slow
@pytest.mark.ddp
def test_accelerate_launch_multi_gpu_on_cpu_trains_lora_in_two_processes(setup, auto_precision):
    """The documented `accelerate launch` form, with LoRA (frozen copies of the head next to trained ones).
    Precision: the suite's (the recipe's `auto`; accelerate's `--mixed_precision no` does not override it), to
    CLOSE_RUNS: under bf16 LoRA's weights drift ~1e-4 apart, beyond fp32's 2e-5 (see there)."""
    base = setup[0]
    lora = base / "lora-2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(launch.free_port()), "-m", "textxfer", "train",
           str(recipe_file(setup, lora, strategy__name="lora", strategy__lora__dropout=0.0))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read(lora, "metrics.json")["num_processes"] == 2
    one = base / "lora-1"
    train(yaml.safe_load(recipe_file(setup, one, strategy__name="lora", strategy__lora__dropout=0.0).read_text()))
    assert_close_runs(one, lora, auto_precision)


def test_shards_cover_every_example_once_whatever_the_cut():
    batch = list(range(100, 111))  # 11 examples
    for accum, procs in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 4), (4, 4)]:
        real = []
        for rank in range(procs):
            parts = shard(batch, accum, procs, rank)
            assert len(parts) == accum  # every process runs every micro-step (DDP needs all of them)
            for idx, n in parts:
                assert len(idx) >= 1
                real += idx[:n]
        assert sorted(real) == batch, (accum, procs)
    # 1 process x 2 accumulation and 2 processes x 1 cut the same pieces
    assert [p for p, _ in shard(batch, 2, 1, 0)] == [shard(batch, 1, 2, r)[0][0] for r in range(2)]
    # one example, two processes: process 0's piece is empty, so it runs that example at weight 0
    assert [shard([7], 1, 2, r) for r in range(2)] == [[([7], 0)], [([7], 1)]]


def test_a_single_process_where_several_were_asked_for_is_refused(monkeypatch):
    for key in (launch.ENV_REQUEST, "WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(key, raising=False)
    alone = SimpleNamespace(num_processes=1)
    launch.check_process_count(alone)  # a plain run
    monkeypatch.setenv(launch.ENV_REQUEST, "2")
    with pytest.raises(UserError, match="2 processes were asked for.*num_processes: 1"):
        launch.check_process_count(alone)
    monkeypatch.delenv(launch.ENV_REQUEST)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun started 2, but they did not join one process group
    with pytest.raises(UserError, match="--multi_gpu"):
        launch.check_process_count(alone)
    launch.check_process_count(SimpleNamespace(num_processes=2))
    monkeypatch.delenv("WORLD_SIZE")
    # what `accelerate launch --cpu --num_processes 2` leaves: one process, a rendezvous address, no WORLD_SIZE
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(UserError, match="trains alone"):
        launch.check_process_count(alone)


def test_the_process_count_is_checked_when_training_starts(setup, monkeypatch, tmp_path):
    monkeypatch.setenv(launch.ENV_REQUEST, "2")
    with pytest.raises(UserError, match="num_processes: 1"):
        train(tiny_recipe(setup[1], setup[2], tmp_path / "run"))


def test_more_processes_than_examples_is_a_clear_error():
    launch.check_enough_examples(4, 4)
    with pytest.raises(UserError, match="only 3 examples.*--num-processes 3"):
        launch.check_enough_examples(3, 4)
    with pytest.raises(UserError, match="at least 1"):
        launch.launch_train("recipe.yaml", [], None, False, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is fine on a GPU")
def test_fp16_on_cpu_is_a_clear_error(setup, tmp_path):
    from textxfer.config.reading import load_recipe

    recipe = load_recipe(data=tiny_recipe(setup[1], setup[2], tmp_path / "run", training__mixed_precision="fp16"))
    with pytest.raises(UserError, match="fp16.*needs a GPU"):
        make_accelerator(recipe)


def test_trainable_parameters_the_forward_never_uses_are_frozen_for_ddp():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def forward(self, x):
            return SimpleNamespace(logits=self.used(x))

    loop = SimpleNamespace(model=Toy(), acc=SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext),
                           train_dl=SimpleNamespace(collate_fn=lambda idx: {"x": torch.randn(len(idx), 4)},
                                                    dataset=range(6)))
    loop.to_device, loop.train_mode = (lambda b: b), (lambda: None)
    loop.logits = lambda b: loop.model(b["x"]).logits
    before = torch.random.get_rng_state()
    Loop.freeze_unused(loop)
    assert torch.equal(before, torch.random.get_rng_state())  # the probe leaves the random stream as it was
    assert loop.model.used.weight.requires_grad and not loop.model.unused.weight.requires_grad
    assert all(p.grad is None for p in loop.model.parameters())


def test_tracker_config_is_flat_and_a_missing_tracker_is_a_clear_error(monkeypatch):
    flat = launch.flat_config({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x"})
    assert flat == {"a.b": 1, "a.c": "null", "a.d": "[1, 2]", "e": "x"}
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(UserError, match="wandb"):
        launch.tracker_kwargs("wandb", Path("run"))
