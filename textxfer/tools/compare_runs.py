"""The runs of `textxfer compare`: the strategy variants it knows, the recipe of one (variant, few-shot size, seed)
run, and training it while recording its outcome, time, trainable parameters and peak memory.

Variants differ only in what trains (the `strategy` and the contrastive stage); data, model and optimisation
settings come from the one recipe, so the comparison is fair. A run that fails is recorded with its error, never
raised, so one failing variant does not stop the others.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("textxfer")

# Variant name -> what trains in it (shown in `--help` and when `--strategies` names an unknown one).
VARIANTS: dict[str, str] = {
    "recipe": "the recipe as written",
    "head": "only the classifier trains on the frozen body (cached)",
    "freeze": "the upper layers and the classifier train; embeddings + lower `freeze_layers` frozen (cached)",
    "lora": "LoRA adapters on every layer plus the classifier",
    "full": "every parameter trains",
    "gradual": "the classifier, then one more layer group from the top each epoch (ULMFiT-style)",
    "contrastive": "SetFit-style contrastive tuning of the upper layers (mean pooling), then the classifier alone",
    "self-training": "the recipe as written, then again with the unlabelled texts (`data.unlabelled`) it labels "
                     "most confidently (docs/self-training.md)",
}
NEEDS_UNLABELLED = ("self-training",)
"""Variants that learn from `data.unlabelled`; every other variant trains on the labelled examples alone."""


@dataclass
class RunRecord:
    """One (variant, few-shot size, seed) run: where it was written and, once trained, its outcome (`ok`, or the
    error), the evaluation split's metrics, train time, trainable parameters and peak memory."""

    variant: str
    shots: int | None
    seed: int
    run_dir: Path
    ok: bool = False
    error: str = ""
    metrics: dict = field(default_factory=dict)
    train_seconds: float | None = None
    trainable_params: int | None = None
    peak_memory_mb: float | None = None
    split: str = ""

    @property
    def examples_per_class(self) -> int | str:
        """The few-shot size as the tables name it: `all` for the whole training set."""
        return "all" if self.shots is None else self.shots


def layer_count(recipe_dict: dict) -> int:
    """Encoder layers of the recipe's checkpoint (0 when the config does not say)."""
    from textxfer.backbones.load import load_config, resolve_model_name

    m = recipe_dict["model"]
    cfg = load_config(resolve_model_name(m["name"]), m.get("revision"), m.get("trust_remote_code", False))
    return int(getattr(cfg, "num_hidden_layers", 0) or 0)


def variant_recipe(base: dict, variant: str, shots: int | None, seed: int, run_dir: Path) -> dict:
    """The recipe of one run: the base recipe with the variant's strategy, the few-shot size and the seed."""
    r = copy.deepcopy(base)
    s, t = r["strategy"], r["training"]
    r["output_dir"] = str(run_dir)
    t["seed"] = seed
    if shots is not None:
        r["data"]["examples_per_class"] = shots
    r.setdefault("hub", {}).setdefault("push", {})["repo_id"] = None  # a comparison never publishes
    if variant in NEEDS_UNLABELLED:
        return r
    r["data"]["unlabelled"] = None  # the labelled examples alone: what self-training is compared against
    if variant == "recipe":
        return r
    t["contrastive"] = None
    if variant == "contrastive":
        if s["name"] not in ("freeze", "gradual") or not s.get("freeze_layers"):
            s["freeze_layers"] = max(layer_count(r) // 2, 0)
        s["name"] = "freeze"
        r["model"]["pooling"] = "mean"
        base_c = base["training"].get("contrastive")
        t["contrastive"] = copy.deepcopy(base_c) if base_c else {}
        t["contrastive"]["then"] = "head"
        return r
    if variant == "freeze" and not s.get("freeze_layers"):
        s["freeze_layers"] = max(layer_count(r) // 2, 0)
    s["name"] = variant
    if variant in ("head", "lora"):
        s["reinit_layers"] = 0
    return r


class MemoryWatch:
    """Peak resident memory added while a run trains (sampled every 50 ms; GPU: peak allocated)."""

    def __init__(self) -> None:
        self.peak = 0
        self.base = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.megabytes = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                          else max(self.peak - self.base, 0)) / 2**20
        return False


def run_one(recipe: dict, record: RunRecord) -> RunRecord:
    """Train one variant; any failure is recorded (with the traceback in RUN_DIR/error.txt), never raised."""
    from textxfer.tools.train import train

    record.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with MemoryWatch() as mem:
            result = train(recipe, overwrite=True, command=f"textxfer compare ({record.variant}, seed {record.seed})")
        record.peak_memory_mb = round(mem.megabytes, 1)
        metrics = result.metrics
        record.split = "test" if "test" in metrics else "validation"
        record.metrics = metrics.get(record.split) or {}
        run = json.loads((record.run_dir / "run.json").read_text())
        record.train_seconds = run.get("train_seconds")
        record.trainable_params = run.get("trainable_params")
        hist = json.loads((record.run_dir / "history.json").read_text())
        stage = hist.get("contrastive_stage") if isinstance(hist, dict) else None
        if stage:  # the body trained during the stage, then froze: count what trained at all
            record.trainable_params = (record.trainable_params or 0) + int(stage.get("body_params", 0))
        record.ok = True
    except (Exception, SystemExit) as e:  # a failing variant must not stop the others
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        record.error = f"{type(e).__name__}: {text}"[:300]
        (record.run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        log.warning(f"compare: {record.variant} (seed {record.seed}) failed: {record.error}")
    return record
