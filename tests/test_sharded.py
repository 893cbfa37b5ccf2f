"""Sharded training (`training.sharding`): FSDP2 over 2 processes trains as one process does and its checkpoints
resume exactly; what cannot shard (no GPU, DeepSpeed not installed, a mismatched config, a strategy that trains
too little) is refused with an error that says what to do.

Accelerate runs FSDP only on GPUs. The runs here go through `tests/fsdp_on_cpu.py`, which lets Accelerate's state
say FSDP on CPU processes over gloo as it does on GPUs; everything else (the plugin, `prepare`, `save_state`,
`load_state`, PyTorch's FSDP2) is the real code. `scripts/gpu_check.sh` runs the same on GPUs, unpatched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_tiny_checkpoint, tiny_recipe, write_tiny_dataset
from test_ddp import assert_close_runs, read

from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError
from textxfer.engine import checkpoint, resuming, sharding
from textxfer.engine import distributed as launch
from textxfer.engine.run_state import Progress, RunState
from textxfer.engine.setup import make_accelerator
from textxfer.tools.train import train

ROOT = Path(__file__).resolve().parent.parent
# As tests/test_ddp.py: 60 examples, global batch 8, 16 steps, no dropout; a checkpoint every 4 steps.
SETTINGS = dict(model__dropout=0.0, training__log_every=1, training__learning_rate=3e-3,
                training__checkpoint_every=4, training__keep_checkpoints=10, training__sharding="fsdp")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharded")
    return base, make_tiny_checkpoint("bert", base / "bert"), write_tiny_dataset(base / "data", n=60)


def recipe_file(setup, out: Path, **over) -> Path:
    base, model, data = setup
    path = base / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model, data, out, **{**SETTINGS, **over})))
    return path


def fsdp_on_cpu(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 ... textxfer train RECIPE ARGS` on CPU processes (gloo),
    with Accelerate's FSDP allowed there (tests/fsdp_on_cpu.py)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(launch.free_port()), str(ROOT / "tests" / "fsdp_on_cpu.py"), "train",
           str(recipe), *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def resume_from(run: Path, step: int, into: Path, recipe: Path) -> None:
    """Resume the run's checkpoint at `step` in another output folder (2 processes, FSDP)."""
    (into / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / f"step-{step:07d}", into / "checkpoints" / f"step-{step:07d}")
    fsdp_on_cpu(recipe, "--output-dir", str(into), "--resume")


def assert_same_after(a: Path, b: Path, step: int) -> None:
    """Bit-exact: every training loss after `step` and every evaluation after it."""
    ha, hb = read(a, "history.json"), read(b, "history.json")
    after = [h for h in ha["train"] if h["step"] > step]
    assert after and after == [h for h in hb["train"] if h["step"] > step]
    evals = [h for h in ha["eval"] if h["step"] > step]
    assert evals and evals == [h for h in hb["eval"] if h["step"] > step]


@pytest.mark.ddp
def test_fsdp_trains_as_one_process_and_its_sharded_checkpoint_resumes_exactly(setup):
    """FSDP2 over 2 processes = 1 process x accumulation 2 (fp32: the two set-ups differ only in the summation order
    of the gradients, to test_ddp's CLOSE_RUNS["no"]); a resume from a sharded checkpoint is bit-exact.
    Precision: fp32 (the recipe says `no`), so that FSDP's parameter casts and autocast's do not differ."""
    base = setup[0]
    run = base / "fsdp"
    recipe = recipe_file(setup, run, training__mixed_precision="no")
    proc = fsdp_on_cpu(recipe)
    log = (run / "train.log").read_text()
    assert "sharding: FSDP2 over 2 processes, one unit per BertLayer" in log
    assert "FSDP" in log and "gathered the whole model" in log
    ckpt = run / "checkpoints" / "step-0000008"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sharding"] == "FSDP" and state["num_processes"] == 2
    assert {"pytorch_model_fsdp_0/.metadata", "optimizer_0/.metadata", "random_states_1.pkl"} <= set(state["files"])
    assert checkpoint.problem_with(ckpt) is None
    assert "checkpoint saved" in proc.stderr

    one = base / "fsdp-one"
    train(yaml.safe_load(recipe_file(setup, one, training__mixed_precision="no", training__sharding=None,
                                     training__gradient_accumulation_steps=2).read_text()))
    assert_close_runs(one, run, "no")

    resumed = base / "fsdp-resumed"
    resume_from(run, 4, resumed, recipe)
    assert "resumed from" in (resumed / "train.log").read_text()
    assert_same_after(run, resumed, 4)


@pytest.mark.slow
@pytest.mark.ddp
def test_fsdp_lora_at_the_suites_precision_resumes_exactly(setup):
    """LoRA under FSDP2 (adapters and head trained, the backbone sharded and frozen), resumed from a checkpoint
    taken after the best evaluation (the best weights are each process's shard, `best-{process}.safetensors`).
    Precision: the suite's; the comparison is exact (the same process count, the same operations)."""
    base = setup[0]
    run = base / "lora"
    recipe = recipe_file(setup, run, strategy__name="lora", strategy__lora__dropout=0.0, training__epochs=3)
    fsdp_on_cpu(recipe)
    state = json.loads((run / "checkpoints" / "step-0000012" / "state.json").read_text())
    assert state["best_in"] in ("best-{process}.safetensors", "current")
    from safetensors.torch import load_file

    saved = load_file(run / "model" / "model.safetensors")  # merged, whole: a plain transformers model
    assert not any("lora" in k for k in saved) and saved["bert.embeddings.word_embeddings.weight"].ndim == 2
    resumed = base / "lora-resumed"
    resume_from(run, 12, resumed, recipe)
    assert_same_after(run, resumed, 12)


# ------------------------------------------------------------------------------------------------ refusals


def recipe_with(setup, tmp_path, **over):
    return load_recipe(data=tiny_recipe(setup[1], setup[2], tmp_path / "run", **over))


def test_sharding_keys_are_checked(setup, tmp_path):
    with pytest.raises(UserError, match="strategy `head` trains too little"):
        recipe_with(setup, tmp_path, strategy__name="head", training__sharding="fsdp")
    with pytest.raises(UserError, match="sharding_options.wrap` must name module classes"):
        recipe_with(setup, tmp_path, training__sharding="fsdp", training__sharding_options__wrap=[])
    with pytest.raises(UserError, match="gradient_accumulation_steps: 1"):
        recipe_with(setup, tmp_path, training__sharding="deepspeed", training__gradient_accumulation_steps=2)
    with pytest.raises(UserError, match="zero_stage.*allowed values: 1, 2"):
        recipe_with(setup, tmp_path, training__sharding="deepspeed", training__sharding_options__zero_stage=3)
    with pytest.raises(UserError, match="training.sharding` is 'zero'.*'fsdp', 'deepspeed'"):
        recipe_with(setup, tmp_path, training__sharding="zero")
    r = recipe_with(setup, tmp_path, strategy__name="lora", training__sharding="fsdp")
    assert r.training.sharding_options.reshard_after_forward and r.training.sharding_options.wrap is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU Accelerate does shard")
def test_fsdp_without_a_gpu_is_refused_not_run_unsharded(setup, tmp_path):
    with pytest.raises(UserError, match="FSDP on GPUs only.*training.sharding: null"):
        make_accelerator(recipe_with(setup, tmp_path, training__sharding="fsdp"))


@pytest.mark.skipif(sharding.importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_not_installed_is_refused(setup, tmp_path):
    with pytest.raises(UserError, match="needs the deepspeed package.*pip install deepspeed"):
        make_accelerator(recipe_with(setup, tmp_path, training__sharding="deepspeed"))


def test_the_accelerate_config_sets_the_sharding_and_must_agree_with_the_recipe(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets from a config with FSDP
    fsdp = recipe_with(setup, tmp_path, training__sharding="fsdp")
    assert sharding.asked_sharding(fsdp) == "fsdp"
    assert sharding.accelerator_plugins(fsdp) == {}  # Accelerate builds the plugin from the config, which stands
    assert sharding.asked_sharding(recipe_with(setup, tmp_path)) == "fsdp"  # recipe null: the config decides
    with pytest.raises(UserError, match="recipe asks for `training.sharding: deepspeed`.*config.*FSDP"):
        sharding.accelerator_plugins(recipe_with(setup, tmp_path, training__sharding="deepspeed"))


def fake_acc(kind: str, **state):
    return SimpleNamespace(distributed_type=SimpleNamespace(value=kind), num_processes=2,
                           state=SimpleNamespace(**state))


def test_accelerate_settings_textxfer_cannot_train_under_are_refused(setup, tmp_path):
    fsdp = recipe_with(setup, tmp_path, training__sharding="fsdp")
    with pytest.raises(UserError, match="FSDP version 1.*fsdp_version: 2"):
        sharding.check_sharding(fake_acc("FSDP", fsdp_plugin=SimpleNamespace(fsdp_version=1)), fsdp)
    sharding.check_sharding(fake_acc("FSDP", fsdp_plugin=SimpleNamespace(fsdp_version=2)), fsdp)
    zero3 = SimpleNamespace(zero_stage=3, deepspeed_config={})
    with pytest.raises(UserError, match="ZeRO stage 3.*use FSDP"):
        sharding.check_sharding(fake_acc("DEEPSPEED", deepspeed_plugin=zero3), recipe_with(setup, tmp_path))
    accumulating = SimpleNamespace(zero_stage=2, deepspeed_config={"gradient_accumulation_steps": 4})
    with pytest.raises(UserError, match="gradient_accumulation_steps` must be 1"):
        sharding.check_sharding(fake_acc("DEEPSPEED", deepspeed_plugin=accumulating), recipe_with(setup, tmp_path))


def test_a_checkpoint_resumes_only_with_the_sharding_it_was_saved_with(tmp_path):
    ddp, fsdp = fake_acc("MULTI_CPU"), fake_acc("FSDP")
    assert resuming.check_sharding_matches({"num_processes": 2}, ddp, tmp_path) is False  # older checkpoints
    assert resuming.check_sharding_matches({"sharding": "FSDP", "num_processes": 2}, fsdp, tmp_path) is True
    with pytest.raises(UserError, match="saved by a run sharded with FSDP, and this run is unsharded"):
        resuming.check_sharding_matches({"sharding": "FSDP", "num_processes": 2}, ddp, tmp_path)
    with pytest.raises(UserError, match="saved by a run unsharded.*this run is sharded with FSDP"):
        resuming.check_sharding_matches({"sharding": None, "num_processes": 2}, fsdp, tmp_path)
    with pytest.raises(UserError, match="--num-processes 4"):
        resuming.check_sharding_matches({"sharding": "FSDP", "num_processes": 4}, fsdp, tmp_path)


def test_the_manifest_lists_files_in_subfolders_and_a_missing_shard_makes_a_checkpoint_incomplete(tmp_path):
    ckpt = tmp_path / "step-0000004"
    (ckpt / "pytorch_model_fsdp_0").mkdir(parents=True)
    (ckpt / "pytorch_model_fsdp_0" / "__1_0.distcp").write_bytes(b"x" * 10)
    (ckpt / "scheduler.bin").write_bytes(b"y")
    loop = SimpleNamespace(state=RunState(progress=Progress(step=4), fingerprints={}), recipe=load_recipe(data={
        "model": {"name": "m"}, "data": {"train": "t.csv"}}), total_steps=8, acc=fake_acc("FSDP"), started=0.0)
    record = checkpoint.state_record(loop, "test", None, ckpt)
    assert record["files"] == {"pytorch_model_fsdp_0/__1_0.distcp": 10, "scheduler.bin": 1}
    assert record["sharding"] == "FSDP"
    (ckpt / "state.json").write_text(json.dumps(record))
    assert checkpoint.problem_with(ckpt) is None
    (ckpt / "pytorch_model_fsdp_0" / "__1_0.distcp").unlink()
    assert checkpoint.problem_with(ckpt) == "pytorch_model_fsdp_0/__1_0.distcp is missing"
