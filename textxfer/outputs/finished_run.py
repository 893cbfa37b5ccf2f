"""A finished run directory, read and checked once: what a model card is written from and what a push publishes.

Reading it here, before anything is built or uploaded, turns a missing, interrupted or damaged run into a
UserError that says what is wrong and how to fix it, instead of a failure halfway through a card or a push.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textxfer.core.errors import UserError

# How a run is published: the full model with any adapters merged in, or the LoRA adapter (and head) alone.
MODES = ("merged", "adapter")


@dataclass
class Run:
    """A finished run directory, read and checked once."""

    dir: Path
    record: dict
    metrics: dict
    recipe: dict
    recipe_text: str

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.record.get("labels") or []]

    @property
    def task(self) -> str:
        return self.record.get("task") or "text"

    @property
    def multi_label(self) -> bool:
        return bool(self.record.get("multi_label"))

    @property
    def model_name(self) -> str:
        return str(self.record.get("model_name") or self.recipe.get("model", {}).get("name") or "")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} ({what}) is not valid JSON ({e.msg}, line {e.lineno}): the run directory is "
                        "damaged. Train the run again.") from None


def read_run(run_dir: str | Path) -> Run:
    """Read a run directory; anything but a finished textxfer run is a UserError saying what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory. Give the run directory that `textxfer train` wrote "
                        "(the recipe's `output_dir`, e.g. runs/quickstart).")
    record_file = path / "run.json"
    if not record_file.is_file():
        raise UserError(
            f"{path} is not a textxfer run directory: it has no run.json. Give the folder that `textxfer train` "
            "wrote (it holds run.json, recipe.yaml, metrics.json and model/), e.g. runs/quickstart."
        )
    record = _read_json(record_file, "the run record")
    if not isinstance(record, dict) or record.get("finished") is not True:
        raise UserError(
            f"{path} holds a run that did not finish ({record_file} has no \"finished\": true): it was "
            "interrupted or is still training. Let `textxfer train` complete it, then push."
        )
    for name in ("metrics.json", "recipe.yaml"):
        if not (path / name).is_file():
            raise UserError(f"{path} is missing {name}, which every finished run has: the run directory is "
                            "incomplete. Train the run again.")
    metrics = _read_json(path / "metrics.json", "the run's metrics")
    recipe_text = (path / "recipe.yaml").read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError:
        raise UserError(f"{path / 'recipe.yaml'} is not valid YAML: the run directory is damaged.") from None
    return Run(path, record, metrics if isinstance(metrics, dict) else {},
               recipe if isinstance(recipe, dict) else {}, recipe_text)


def source_folder(run: Run, mode: str) -> Path:
    """The folder whose files a push publishes: model/ (merged) or adapter/; checked to be complete."""
    if mode not in MODES:
        raise UserError(f"Unknown push mode {mode!r}: use `merged` (the full model) or `adapter` (LoRA only).")
    if mode == "merged":
        folder = run.dir / "model"
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} has no config.json: the run's model folder is missing or incomplete. "
                            "Train the run again.")
        if not any(folder.glob("*.safetensors")):
            raise UserError(f"{folder} has no .safetensors weights: the run's model folder is incomplete. "
                            "Train the run again.")
        return folder
    folder = run.dir / "adapter"
    if not (folder / "adapter_config.json").is_file():
        strategy = (run.record.get("strategy") or {}).get("name", "?")
        raise UserError(
            f"{run.dir} has no adapter ({folder / 'adapter_config.json'} is missing): only LoRA runs with "
            f"`save_adapter: true` save one (this run's strategy: {strategy}). Push the merged model instead "
            "(drop --adapter-only), or train with `--set strategy.name=lora --set save_adapter=true`."
        )
    return folder
