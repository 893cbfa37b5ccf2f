"""What a run leaves behind (see README, "The run directory"): a model folder plain `transformers` loads,
the adapter (LoRA, on request), the resolved recipe, metrics, history, predictions and the run record.

Files are written to a temporary name and renamed, so a crash never leaves a half-written model or record.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from textxfer.core.environment import describe as describe_environment
from textxfer.core.environment import versions
from textxfer.core.files import replace_dir, write_json
from textxfer.core.layout import ADAPTER_DIR, CONFIG_MAX_LENGTH, CONFIG_PAIR_COLUMN, MODEL_DIR
from textxfer.engine.checkpoint import data_fingerprints


def git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": "cuda" if gpu else "cpu", "cpu": cpu, "torch_threads": torch.get_num_threads(), "gpu": gpu}


def save_model(loop, out: Path) -> None:
    """The merged model folder (plain transformers), and for LoRA with `save_adapter` the adapter too."""
    model = loop.acc.unwrap_model(loop.model)
    thresholds = loop.state.thresholds
    if loop.splits.multi_label and thresholds is not None:  # predict/pipeline users get the tuned thresholds
        model.config.textxfer_thresholds = [float(t) for t in thresholds]
    if loop.modality.name == "text":
        record_reading(model.config, loop.recipe)
    if loop.applied.is_peft and loop.recipe.save_adapter:
        tmp = out / f".{ADAPTER_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        loop.modality.save_preprocessor(loop, tmp)
        meta = {"labels": loop.labels, "id2label": dict(enumerate(loop.labels)),
                "label2id": {lab: i for i, lab in enumerate(loop.labels)},
                "problem_type": model.config.problem_type, "base_model": loop.recipe.model.name}
        write_json(tmp / "textxfer_labels.json", meta)
        replace_dir(tmp, out / ADAPTER_DIR)
    if loop.applied.is_peft:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    tmp = out / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    loop.modality.save_preprocessor(loop, tmp)
    replace_dir(tmp, out / MODEL_DIR)


def record_reading(config, recipe) -> None:
    """Write into the model config how training read text: its token limit and, for sentence pairs, the second
    column. `textxfer predict`/`evaluate` and `textxfer.load` read the same way (a checkpoint that was itself a
    textxfer model loses a pair column this run did not use)."""
    setattr(config, CONFIG_MAX_LENGTH, int(recipe.model.max_length))
    pair = recipe.data.text_pair_column
    if pair is not None:
        setattr(config, CONFIG_PAIR_COLUMN, pair)
    elif hasattr(config, CONFIG_PAIR_COLUMN):
        delattr(config, CONFIG_PAIR_COLUMN)


def write_predictions(loop, split: str, logits: np.ndarray, path: Path) -> None:
    from textxfer.data.fingerprint import column

    ds = getattr(loop.splits, split)
    multi = loop.splits.multi_label
    scores = torch.from_numpy(logits)
    probs = (scores.sigmoid() if multi else scores.softmax(-1)).numpy()
    tmp = path.with_name(f".{path.name}.tmp")
    key = "image" if "image" in ds.column_names else "text"  # images: the file path (or source#row)
    items, targets = column(ds, key), column(ds, "labels" if multi else "label")
    pairs = column(ds, "text_pair") if "text_pair" in ds.column_names else None  # sentence pairs: the second text
    with open(tmp, "w", encoding="utf-8") as f:
        for i, (item, target) in enumerate(zip(items, targets, strict=True)):
            p = probs[i]
            if multi:
                chosen = np.flatnonzero(p >= np.asarray(loop.state.thresholds))
                label = [loop.labels[j] for j in np.flatnonzero(np.asarray(target) > 0.5)]
                pred = [loop.labels[j] for j in chosen]
                confidence = float(p[chosen].min()) if len(chosen) else float(1 - p.max())
            else:
                label, pred, confidence = loop.labels[int(target)], loop.labels[int(p.argmax())], float(p.max())
            row = {key: item, **({"text_pair": pairs[i]} if pairs is not None else {}), "label": label,
                   "pred": pred, "confidence": confidence, "probs": [round(float(x), 6) for x in p]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_run(loop, results: dict, predictions: dict[str, np.ndarray]) -> None:
    """Everything after training, model first: a failing plot never loses the trained model."""
    out: Path = loop.out
    out.mkdir(parents=True, exist_ok=True)
    save_model(loop, out)
    write_json(out / "metrics.json", results)
    write_json(out / "history.json", loop.state.history)
    (out / "predictions").mkdir(exist_ok=True)
    for split, logits in predictions.items():
        write_predictions(loop, split, logits, out / "predictions" / f"{split}.jsonl")
    r = loop.recipe
    fingerprints = data_fingerprints(loop)
    record = {
        "textxfer_version": versions().get("textxfer"), "command": loop.command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(loop.started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_seconds": round(loop.train_seconds, 2),
        "model_name": r.model.name, "model_path": loop.model_path, "task": loop.modality.name,
        "strategy": {"name": r.strategy.name, "freeze_layers": r.strategy.freeze_layers,
                     "lora": vars(r.strategy.lora) if r.strategy.name == "lora" else None,
                     "lora_layers": r.strategy.lora_layers},
        "trainable_params": loop.applied.trainable, "total_params": loop.applied.total,
        "frozen": (["embeddings"] + [f"layer.{i}" for i in range(loop.applied.frozen_prefix)]
                   if loop.applied.frozen_prefix >= 0 else []),
        "layer_groups": len(loop.parts.layers),
        "labels": loop.labels, "multi_label": loop.splits.multi_label, "num_processes": loop.acc.num_processes,
        "hardware": hardware(), "versions": versions(), "git_revision": git_revision(),
        "environment": describe_environment(),
        "data": {split: {"rows": len(ds), "source": loop.splits.sources.get(split, "carved from train"),
                         "fingerprint": fingerprints[split], **_in_memory(loop, split)}
                 for split, ds in loop.splits.items()},
        "finished": True,
    }
    write_json(out / "run.json", record)
    try:
        from textxfer.outputs import report

        report.write_report(out)
    except Exception as e:  # plots are a convenience; the model is already saved
        loop_log(f"warning: could not write plots/report files: {e}")


def _in_memory(loop, split: str) -> dict:
    """For data given from Python (`train(train=df)`): {"in_memory": type, argument, rows, columns, fingerprint}."""
    record = getattr(loop.splits, "in_memory", {}).get(split)
    return {"in_memory": record} if record else {}


def loop_log(msg: str) -> None:
    import logging

    logging.getLogger("textxfer").warning(msg)


