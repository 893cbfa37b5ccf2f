"""Several machines through Accelerate, tried on this one: two launches on loopback (machine ranks 0 and 1, one
process each) train as one process does with the same global batch, resume after both are killed, and refuse
ranks started with different recipes. The options' checks and the launch command are tested without launching."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_checkpoint, tiny_recipe, with_pythonpath, write_tiny_dataset
from test_ddp import SETTINGS, assert_close_runs, read

from textxfer.core.errors import UserError
from textxfer.engine import checkpoint
from textxfer.engine.distributed import Topology, free_port, launch_command

ROOT = Path(__file__).resolve().parent.parent
ON_CPU = {"CUDA_VISIBLE_DEVICES": ""} if torch.cuda.device_count() < 2 else {}

# Started in every process of a launch (as sitecustomize): with PAUSE_AT set, each training process says when it
# reaches that step and then waits, so that the test can kill the machines in the middle of the run.
PAUSING_SITE = """
import os, time
if os.environ.get("PAUSE_AT"):
    import textxfer.engine.loop as tr
    step = tr.Loop.train_step
    def train_step(self, indices):
        if self.state.progress.step == int(os.environ["PAUSE_AT"]):
            open(os.environ["READY"] + str(self.acc.process_index), "w").close()
            time.sleep(300)
        return step(self, indices)
    tr.Loop.train_step = train_step
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("machines")
    site = base / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PAUSING_SITE)
    return base, make_tiny_checkpoint("bert", base / "bert"), write_tiny_dataset(base / "data", n=60), site


def recipe_file(setup, name: str, **over) -> Path:
    base, model, data, _ = setup
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(model, data, base / name, **{**SETTINGS, **over})))
    return path


def start_machines(setup, recipe: Path, out: Path, *extra: str, env: dict | None = None,
                   per_rank: dict[int, list[str]] | None = None) -> list[subprocess.Popen]:
    """Rank 1 first, then rank 0: `textxfer train ... --num-processes 2 --num-machines 2` on loopback."""
    port = str(free_port())
    procs = []
    for rank in (1, 0):
        cmd = [sys.executable, "-m", "textxfer", "train", str(recipe), "--num-processes", "2", "--num-machines", "2",
               "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1", "--main-process-port", port,
               "--output-dir", str(out), *extra, *(per_rank or {}).get(rank, [])]
        log = open(out.parent / f"{out.name}-rank{rank}.log", "a")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", **ON_CPU, **(env or {})}))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
    return codes


def log_of(out: Path, rank: int) -> str:
    return (out.parent / f"{out.name}-rank{rank}.log").read_text()


@pytest.mark.ddp
def test_two_machines_on_loopback_train_as_one_process_and_resume_after_both_die(setup, auto_precision):
    """Precision: the suite's, to test_ddp's CLOSE_RUNS (two processes change only the gradients' summation order).
    The killed run resumes from its last complete checkpoint on both machines and ends as one process does."""
    base = setup[0]
    one = base / "one"
    # 1 process x 2 accumulation steps: the same micro-batches as 2 processes, so only the summation order differs
    done = subprocess.run([sys.executable, "-m", "textxfer", "train",
                           str(recipe_file(setup, "one", training__gradient_accumulation_steps=2)),
                           "--output-dir", str(one)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **ON_CPU})
    assert done.returncode == 0, done.stderr[-3000:]

    two = base / "two"
    recipe = recipe_file(setup, "two")
    assert wait_all(start_machines(setup, recipe, two)) == [0, 0], log_of(two, 0)[-3000:] + log_of(two, 1)[-3000:]
    assert read(two, "metrics.json")["num_processes"] == 2
    assert_close_runs(one, two, auto_precision)

    killed = base / "killed"
    ready = base / "ready-"
    pausing = {"PAUSE_AT": "6", "READY": str(ready), "PYTHONPATH": with_pythonpath(setup[3])}
    procs = start_machines(setup, recipe_file(setup, "killed", training__checkpoint_every=2), killed, env=pausing)
    deadline = time.time() + 300
    while not all(Path(f"{ready}{i}").exists() for i in (0, 1)):
        assert all(p.poll() is None for p in procs), log_of(killed, 0)[-3000:]
        assert time.time() < deadline, "the machines never reached step 6"
        time.sleep(0.2)
    for p in procs:  # every process of both machines, at once
        os.killpg(p.pid, signal.SIGKILL)
    wait_all(procs)
    assert [c.name for c in checkpoint.complete_checkpoints(killed / "checkpoints")][-1] == "step-0000006"
    procs = start_machines(setup, recipe_file(setup, "killed", training__checkpoint_every=2), killed, "--resume")
    assert wait_all(procs) == [0, 0], log_of(killed, 0)[-3000:]
    assert "resumed from" in (killed / "train.log").read_text()
    assert_close_runs(one, killed, auto_precision)


@pytest.mark.ddp
def test_machines_started_with_different_recipes_are_refused_naming_the_difference(setup):
    out = setup[0] / "mixed"
    procs = start_machines(setup, recipe_file(setup, "mixed"), out,
                           per_rank={1: ["--set", "training.learning_rate=0.01"]})
    assert wait_all(procs) != [0, 0]
    text = log_of(out, 0) + log_of(out, 1)
    assert "Process 1 was started with another recipe" in text and "training.learning_rate" in text
    assert not (out / "model").exists()


def test_topology_options_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(UserError, match="--machine-rank 2 is not one of 0..1"):
        Topology(2, num_machines=2, machine_rank=2, main_process_ip="10.0.0.1").check()
    with pytest.raises(UserError, match="needs --main-process-ip"):
        Topology(2, num_machines=2, machine_rank=1).check()
    with pytest.raises(UserError, match="must be a multiple of it"):
        Topology(3, num_machines=2, main_process_ip="10.0.0.1").check()
    with pytest.raises(UserError, match="no such file"):
        Topology(accelerate_config=str(tmp_path / "missing.yaml")).check()
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="holds no settings"):
        Topology(accelerate_config=str(tmp_path / "bad.yaml")).check()
    assert not Topology(1).launches() and not Topology().launches() and Topology(2).launches()


def test_launch_command_passes_the_machines_and_honours_an_accelerate_config(tmp_path):
    cmd, env = launch_command("r.yaml", ["training.epochs=1"], "out", False,
                              Topology(4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                                       main_process_port=29555))
    text = " ".join(cmd)
    assert "--num_processes 4 --num_machines 2" in text and "--machine_rank 1 --main_process_ip 10.0.0.1" in text
    assert "--main_process_port 29555" in text and env["TEXTXFER_NUM_PROCESSES"] == "4"
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump({"distributed_type": "FSDP", "num_processes": 2, "mixed_precision": "bf16",
                                      "num_machines": 1}))
    cmd, env = launch_command("r.yaml", [], None, False, Topology(accelerate_config=str(config)))
    assert cmd[cmd.index("--config_file") + 1] == str(config)
    for overridden in ("--mixed_precision", "--multi_gpu", "--num_processes", "--dynamo_backend"):
        assert overridden not in cmd  # the config's own values stand
    assert env["TEXTXFER_NUM_PROCESSES"] == "2"
    cmd, _ = launch_command("r.yaml", [], None, False, Topology(4, accelerate_config=str(config)))
    assert cmd[cmd.index("--num_processes") + 1] == "4"  # given on the command line: passed on, as accelerate does
