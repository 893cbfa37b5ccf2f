"""Several processes, launched so that they really train together, and a check that they do.

`textxfer train RECIPE --num-processes N` starts `accelerate launch --multi_gpu --num_processes N -m textxfer
train ...` (on a CPU-only machine with ACCELERATE_USE_CPU=1: DDP over gloo). Two launches that look right and
are not are caught when the Accelerator starts (`check_process_count`): `accelerate launch --cpu
--num_processes 2` (or without `--multi_gpu`) starts ONE process, and a launcher whose processes do not join one
process group trains N unsynchronised copies. Both stop with an error that says what to run instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textxfer.core.errors import UserError

ENV_REQUEST = "TEXTXFER_NUM_PROCESSES"
"""Set by `launch_train` for its processes: how many were asked for."""
ENV_COMMAND = "TEXTXFER_COMMAND"
"""Set by `launch_train`: the user's command line, recorded in run.json instead of the per-process one."""


# ------------------------------------------------------------------------------------------------ checking

def _parent_num_processes() -> int | None:
    """`--num_processes N` on the command line of an `accelerate launch` parent process (Linux), if any."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not any("accelerate" in a for a in args[:3]):
        return None
    for i, a in enumerate(args):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(args) and args[i + 1].isdigit():
                return int(args[i + 1])
            if a.startswith(flag + "="):
                value = a.split("=", 1)[1]
                return int(value) if value.isdigit() else None
    return None


def requested_processes() -> int | None:
    """How many processes the launch asked for: `textxfer train --num-processes`, torchrun's WORLD_SIZE, or an
    `accelerate launch` that asked for several but started one (0 when the count is unknown); None: a plain run."""
    if os.environ.get(ENV_REQUEST):
        return int(os.environ[ENV_REQUEST])
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ or "ACCELERATE_USE_CPU" in os.environ
    if launched_by_accelerate:
        n = _parent_num_processes()
        if n is not None:
            return n
        if os.environ.get("MASTER_ADDR"):  # accelerate's single-process launcher sets it only when N > 1
            return 0
    return None


def check_process_count(acc) -> None:
    """Stop unless the Accelerator runs as many synchronised processes as were asked for."""
    asked = requested_processes()
    if asked is None or asked == acc.num_processes:
        return
    got = acc.num_processes
    how = ("textxfer train RECIPE --num-processes N, or on a CPU machine: ACCELERATE_USE_CPU=1 accelerate launch "
           "--multi_gpu --num_processes N -m textxfer train RECIPE")
    if got == 1 and asked != 1:
        many = f"{asked} processes were asked for" if asked else "several processes were asked for"
        raise UserError(
            f"{many}, but this process trains alone (num_processes: 1): the launcher started a single process "
            "(`accelerate launch --cpu --num_processes N` and `accelerate launch --num_processes N` without "
            f"`--multi_gpu` do that) or did not set up a process group, so the copies would not synchronise. Run: {how}."
        )
    raise UserError(f"{asked} processes were asked for, but Accelerate runs {got} (num_processes: {got}). Run: {how}.")


def check_same_run(acc, recipe: dict, fingerprints: Callable[[], dict[str, str]]) -> None:
    """Stop every process unless all were started with the same recipe and the same data (each machine reads its
    own copy): a process that trained on other rows or settings would be averaged in silently."""
    if acc.num_processes < 2:
        return
    from accelerate.utils import gather_object

    from textxfer.config.diff import recipe_diff

    mine = {"recipe": {k: v for k, v in recipe.items() if k != "output_dir"}, "data": fingerprints()}
    everyone = gather_object([mine])
    first = everyone[0]
    for rank, other in enumerate(everyone[1:], start=1):
        diff = recipe_diff(first["recipe"], other["recipe"])
        diff += [f"data.{split}: rows differ (fingerprint {first['data'].get(split)} on process 0, "
                 f"{other['data'].get(split)} here)" for split in sorted(set(first["data"]) | set(other["data"]))
                 if first["data"].get(split) != other["data"].get(split)]
        if diff:
            raise UserError(f"Process {rank} was started with another recipe or other data than process 0 "
                            "(machine rank 0):\n  " + "\n  ".join(diff) + "\nStart every machine with the same "
                            "recipe, --set values and data files.")


def check_enough_examples(n_train: int, n_proc: int) -> None:
    """Every process needs at least one training example."""
    if n_train < n_proc:
        raise UserError(
            f"{n_proc} processes were asked for, but the training data has only {n_train} examples: every "
            f"process needs at least one. Use fewer processes (--num-processes {max(n_train, 1)}) or more data."
        )


# ------------------------------------------------------------------------------------------------ tracking

def tracker_kwargs(log_with: str, run_dir: Path) -> dict:
    """Accelerator arguments for `training.log_with` (TensorBoard event files go to RUN_DIR/logs)."""
    if log_with in (None, "none"):
        return {}
    from accelerate.utils import (
        ProjectConfiguration,
        is_mlflow_available,
        is_tensorboard_available,
        is_wandb_available,
    )

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                 "mlflow": is_mlflow_available}[log_with]()
    if not available:
        package = {"tensorboard": "tensorboard (pip install 'textxfer[tracking]')"}.get(log_with, log_with)
        raise UserError(f"`training.log_with: {log_with}` needs the package {package}, which is not installed. "
                        "Install it, or set `training.log_with: none`.")
    return {"log_with": log_with,
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs"))}


def flat_config(d: dict, prefix: str = "") -> dict:
    """A recipe as flat `a.b.c: scalar` pairs, what trackers' hyper-parameter tables accept."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = "null" if v is None else str(v)
    return out


# ------------------------------------------------------------------------------------------------ launching

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Topology:
    """Where the processes of a run are: `--num-processes` in all (Accelerate's meaning: over every machine),
    `--num-machines`, this machine's `--machine-rank`, the main machine's address and port, and an Accelerate
    config file (`accelerate config`'s output) that the launch reads first."""

    num_processes: int | None = None
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    accelerate_config: str | None = None

    def launches(self) -> bool:
        """Whether `textxfer train` starts the processes through `accelerate launch` (else it trains itself)."""
        return (self.num_processes not in (None, 1) or self.num_machines > 1 or self.accelerate_config is not None)

    def check(self) -> None:
        """Refuse topologies that cannot start, naming the option to fix."""
        if self.num_processes is not None and self.num_processes < 1:
            raise UserError(f"--num-processes must be at least 1, not {self.num_processes}.")
        if self.num_machines < 1:
            raise UserError(f"--num-machines must be at least 1, not {self.num_machines}.")
        if not 0 <= self.machine_rank < self.num_machines:
            raise UserError(f"--machine-rank {self.machine_rank} is not one of 0..{self.num_machines - 1} "
                            f"(--num-machines {self.num_machines}); give each machine its own rank, 0 on the main one.")
        if self.num_machines > 1 and self.accelerate_config is None:
            if not self.main_process_ip:
                raise UserError(f"--num-machines {self.num_machines} needs --main-process-ip: the address of the machine "
                                "started with --machine-rank 0, the same on every machine.")
            n = self.num_processes or self.num_machines
            if n % self.num_machines:
                raise UserError(f"--num-processes {n} counts the processes of all {self.num_machines} machines and "
                                f"must be a multiple of it (e.g. --num-processes {self.num_machines}: one per machine).")
        if self.accelerate_config is not None:
            read_accelerate_config(self.accelerate_config)

    def total_processes(self) -> int | None:
        """The processes of the whole run, from the options or else the Accelerate config (None: unknown)."""
        if self.num_processes is not None:
            return self.num_processes
        if self.accelerate_config is not None:
            value = read_accelerate_config(self.accelerate_config).get("num_processes")
            return int(value) if isinstance(value, int) else None
        return self.num_machines


def read_accelerate_config(path: str) -> dict:
    """An Accelerate config file (YAML or JSON), or a UserError naming it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--accelerate-config {path}: no such file. Write one with `accelerate config --config_file "
                        f"{path}`.") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"--accelerate-config {path} is not a readable YAML/JSON file: {str(e).splitlines()[0]}. "
                        "Write it with `accelerate config`.") from None
    if not isinstance(data, dict):
        raise UserError(f"--accelerate-config {path} holds no settings (a YAML mapping, as `accelerate config` "
                        "writes). Write it with `accelerate config`.")
    return data


def launch_command(recipe: str, overrides: list[str], output_dir: str | None, overwrite: bool,
                   where: Topology | int, resume: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment for this machine's processes of the run.

    Without an Accelerate config: DDP (`--multi_gpu`; over gloo on CPUs), precision and compilation left to the
    recipe. With `--accelerate-config FILE`: the file's settings stand (distributed type, FSDP/DeepSpeed,
    machines...); only the options given on textxfer's command line are passed on, as Accelerate lets them
    override the file. The recipe's `training.mixed_precision` still decides the precision textxfer trains in."""
    import torch

    where = Topology(num_processes=where) if isinstance(where, int) else where
    where.check()
    env = dict(os.environ)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    total = where.total_processes()
    if gpus and total is not None and where.accelerate_config is None:
        local = total // where.num_machines
        if local > gpus:
            raise UserError(f"--num-processes {total} over {where.num_machines} machine(s) asks for {local} GPUs per "
                            f"machine, but this machine has {gpus}. Use --num-processes {gpus * where.num_machines} "
                            "(keep `training.batch_size`: it is the global batch).")
    if not gpus:
        env["ACCELERATE_USE_CPU"] = "1"  # with --multi_gpu: the processes form one gloo process group
    if total is not None:
        env[ENV_REQUEST] = str(total)
    env.setdefault("OMP_NUM_THREADS", "1")  # textxfer sets each process's threads itself (cores / processes)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if where.accelerate_config is not None:
        cmd += ["--config_file", where.accelerate_config]
        given = {"--num_processes": where.num_processes,
                 "--num_machines": where.num_machines if where.num_machines > 1 else None,
                 "--machine_rank": where.machine_rank if where.num_machines > 1 else None,
                 "--main_process_ip": where.main_process_ip, "--main_process_port": where.main_process_port}
        for flag, value in given.items():
            if value is not None:
                cmd += [flag, str(value)]
    else:
        port = where.main_process_port or (free_port() if where.num_machines == 1 else 29500)
        cmd += ["--multi_gpu", "--num_processes", str(total or 1), "--num_machines", str(where.num_machines),
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
        if where.num_machines > 1:
            cmd += ["--machine_rank", str(where.machine_rank), "--main_process_ip", str(where.main_process_ip)]
    cmd += ["-m", "textxfer", "train", recipe]
    for o in overrides:
        cmd += ["--set", o]
    if output_dir:
        cmd += ["--output-dir", output_dir]
    if overwrite:
        cmd.append("--overwrite")
    if resume is not None:
        cmd += ["--resume", resume] if resume else ["--resume"]
    return cmd, env


def launch_train(recipe: str, overrides: list[str], output_dir: str | None, overwrite: bool, where: Topology | int,
                 resume: str | None = None) -> int:
    """Run `textxfer train` in N processes through Accelerate; returns their exit code.

    The recipe is read here first, so a mistake in it is reported once, before any process starts. Ctrl-C
    reaches every process (each saves its part of a checkpoint); SIGTERM sent to this one is passed on.
    """
    from textxfer.config.reading import load_recipe

    (Topology(num_processes=where) if isinstance(where, int) else where).check()
    load_recipe(recipe, overrides)
    cmd, env = launch_command(recipe, overrides, output_dir, overwrite, where, resume)
    env[ENV_COMMAND] = "textxfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    what = f"{env[ENV_REQUEST]} processes" if ENV_REQUEST in env else "the processes of the Accelerate config"
    print(f"launching {what}: {' '.join(shlex.quote(c) for c in cmd[1:])}", file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd, env=env)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends Ctrl-C to the children too
    old_term = signal.signal(signal.SIGTERM, lambda s, f: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
