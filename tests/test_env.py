"""`textxfer env`: what a bug report needs, printed and recorded in run.json, never a secret."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import make_tiny_checkpoint, tiny_recipe, write_tiny_dataset

from textxfer.cli.main import cli
from textxfer.core import environment

FIELDS = ("textxfer:", "torch:", "transformers:", "accelerate:", "peft:", "datasets:", "Python:", "Platform:",
          "CPU:", "CPU cores:", "CPU bf16 native:", "mixed_precision auto resolves to:", "CUDA:",
          "Feature cache:", "Hugging Face cache:", "HF_HUB_OFFLINE:")


def run_env(*args: str) -> str:
    result = CliRunner().invoke(cli, ["env", *args])
    assert result.exit_code == 0, result.output
    return result.output


def auto_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("mixed_precision auto resolves to:"))


def test_env_prints_every_field_aligned(monkeypatch, tmp_path):
    monkeypatch.delenv("TEXTXFER_AUTO_PRECISION", raising=False)
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    text = run_env()
    for field in FIELDS:
        assert any(line.startswith(field) for line in text.splitlines()), (field, text)
    assert any(line.startswith(("GPUs:", "GPU 0:")) for line in text.splitlines()), text
    assert str(tmp_path / "cache" / "features") in text  # the folder features.py really uses
    # values start in one column
    lines = text.strip().splitlines()
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(starts) == 1, text


def test_env_json_parses_and_names_everything():
    info = json.loads(run_env("--json"))
    assert {"textxfer", "torch", "transformers", "accelerate", "peft", "datasets"} <= set(info["versions"])
    assert info["python"]["version"] and info["python"]["implementation"]
    cpu = info["cpu"]
    assert cpu["model"] and cpu["logical_cpus"] >= 1 and cpu["physical_cores"] >= 1 and cpu["torch_threads"] >= 1
    assert isinstance(cpu["bf16_native"], bool)
    assert info["mixed_precision"]["auto_resolves_to"] in ("bf16", "no")
    assert isinstance(info["cuda"]["available"], bool) and isinstance(info["cuda"]["gpus"], list)
    assert info["cache"]["features"] and info["cache"]["huggingface_hub"]


@pytest.mark.parametrize("forced", ["bf16", "no"])
def test_auto_precision_override_changes_the_report(monkeypatch, forced):
    monkeypatch.setenv("TEXTXFER_AUTO_PRECISION", forced)
    line = auto_line(run_env())
    assert line.split(":", 1)[1].split()[0] == forced
    assert f"TEXTXFER_AUTO_PRECISION={forced}" in line
    assert json.loads(run_env("--json"))["mixed_precision"]["auto_resolves_to"] == forced


def test_bad_auto_precision_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("TEXTXFER_AUTO_PRECISION", "fp8")
    assert "fp8" in auto_line(run_env())


def test_no_secret_appears(monkeypatch):
    secrets = {"HF_TOKEN": "hf_FakeTokenValue1234567890", "HUGGING_FACE_HUB_TOKEN": "hf_AnotherFake987654321",
               "TEXTXFER_API_KEY": "sk-not-a-real-key-42", "HF_CLIENT_SECRET": "shh-very-secret-value"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_ENDPOINT", "https://alice:hunter2pass@hub.example.org")
    for out in (run_env(), run_env("--json")):
        for value in [*secrets.values(), "hunter2pass"]:
            assert value not in out
        assert "HF_TOKEN" not in out


def test_missing_package_says_so(monkeypatch):
    monkeypatch.setattr(environment, "PACKAGES", ("torch", "no-such-package-textxfer"))
    assert environment.package_versions()["no-such-package-textxfer"] == environment.NOT_INSTALLED
    line = next(line for line in run_env().splitlines() if line.startswith("no-such-package-textxfer:"))
    assert line.split(":", 1)[1].strip() == "not installed"


def test_gpus_are_listed_with_memory_and_bf16():
    info = environment.describe()
    info["cuda"] = {"available": True, "version": "12.4", "hip": None, "gpus": [
        {"index": 0, "name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "bf16": True},
        {"index": 1, "name": "Tesla T4", "memory_gib": 14.6, "capability": "7.5", "bf16": False}]}
    text = environment.format_report(info)
    assert "CUDA:" in text and "12.4" in text
    gpu0, gpu1 = (next(line for line in text.splitlines() if line.startswith(f"GPU {i}:")) for i in (0, 1))
    assert "NVIDIA H200" in gpu0 and "139.8 GiB" in gpu0 and "bf16 yes" in gpu0
    assert "Tesla T4" in gpu1 and "14.6 GiB" in gpu1 and "bf16 no" in gpu1


def test_run_json_records_the_environment(tmp_path):
    import textxfer

    model = make_tiny_checkpoint("bert", tmp_path / "bert")
    data = write_tiny_dataset(tmp_path / "data", n=24)
    out = tmp_path / "run"
    textxfer.train(tiny_recipe(model, data, out, strategy__name="head", training__epochs=1))
    env = json.loads((out / "run.json").read_text())["environment"]
    assert {"versions", "python", "platform", "cpu", "mixed_precision", "cuda", "cache"} <= set(env)
    assert env["versions"]["textxfer"] and env["cpu"]["physical_cores"] >= 1
