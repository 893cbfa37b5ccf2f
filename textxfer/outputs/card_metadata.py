"""The Hub's YAML metadata of a model card (`library_name`, `pipeline_tag`, `base_model`, `license`, `datasets`,
`tags`, `model-index`), built with huggingface_hub's `ModelCardData` and `EvalResult`, and the pieces the card's
sections share with it: which metrics are reported under which name, Hub repo ids, and data sources shortened so
a card does not publish a user's directories.

Everything comes from the run directory; nothing is invented.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from textxfer.outputs.finished_run import Run

# Metric names as textxfer computes them -> (model-index type, display name, args).
METRIC_SPECS: dict[str, tuple[str, str, dict | None]] = {
    "accuracy": ("accuracy", "Accuracy", None),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
    "micro_f1": ("f1", "Micro F1", {"average": "micro"}),
    "weighted_f1": ("f1", "Weighted F1", {"average": "weighted"}),
    "macro_precision": ("precision", "Macro precision", {"average": "macro"}),
    "macro_recall": ("recall", "Macro recall", {"average": "macro"}),
    "loss": ("loss", "Loss", None),
}
# The ones a model-index (the Hub's evaluation results) reports; the card's table shows every metric.
INDEX_METRICS = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_hub_id(name: str) -> bool:
    """Whether a model name is a Hub repo id (not a local folder or a `package:` checkpoint)."""
    if not name or name.startswith((".", "/", "~", "package:")) or name.count("/") > 1:
        return False
    if Path(name).expanduser().exists():
        return False
    return bool(HUB_ID_RE.match(name)) and "--" not in name and ".." not in name


def display_source(source: Any) -> str:
    """A data source without the user's directories: Hub/package names as they are, local files by name."""
    if isinstance(source, dict):
        return ", ".join(f"{k}: {display_source(v)}" for k, v in source.items())
    if isinstance(source, (list, tuple)):
        return ", ".join(display_source(v) for v in source)
    text = str(source)
    if text.startswith(("hub:", "package:")) or not text.startswith(("/", "~")):
        return text
    return Path(text).name


def published_recipe(text: str) -> str:
    """recipe.yaml as a card and a Hub repo publish it: every local path (data files, the base model's folder, the
    output directory) by its last name, as `display_source` shows it; the rest as written."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(data, dict):
        return text
    return yaml.safe_dump(_without_directories(data), sort_keys=False, allow_unicode=True)


def _without_directories(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directories(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_directories(v) for v in value]
    return display_source(value) if isinstance(value, str) else value


def display_command(command: str) -> str:
    """A command line without the user's directories: each absolute path (or `KEY=path`) by its last name."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shown = []
    for word in words:
        key, sep, value = word.partition("=")
        shown.append(f"{key}={display_source(value)}" if sep and not word.startswith("/") else display_source(word))
    return shlex.join(shown)


def _hub_datasets(run: Run) -> list[str]:
    out = []
    for info in (run.record.get("data") or {}).values():
        src = info.get("source") if isinstance(info, dict) else None
        if isinstance(src, str) and src.startswith("hub:"):
            name = src.removeprefix("hub:").split(":")[0]
            if HUB_ID_RE.match(name) and name not in out:
                out.append(name)
    return out


def _base_card_metadata(run: Run) -> dict:
    """The YAML metadata of a local base checkpoint's own README (license, language), when it has one."""
    path = run.record.get("model_path")
    readme = Path(path) / "README.md" if path else None
    if readme is None or not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return meta if isinstance(meta, dict) else {}


def metric_keys(metrics: dict, best: str | None) -> list[str]:
    """The numeric metrics of one split in the order a card shows them: the run's best metric first, then
    METRIC_SPECS's order, then the rest by name (`epoch` and `step` are not metrics)."""
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("epoch", "step")]
    order = [best] + list(METRIC_SPECS) if best else list(METRIC_SPECS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def card_title(run: Run, repo_id: str | None) -> str:
    """The card's title and model name: the repo's name when it has one, else the run directory's."""
    if repo_id:
        return repo_id.split("/")[-1]
    return run.dir.resolve().name


def card_metadata(run: Run, mode: str, repo_id: str | None = None, license: str | None = None) -> dict:
    """The Hub's YAML metadata block as a dict, built with huggingface_hub's `ModelCardData` and `EvalResult` (the
    model-index the Hub reads its evaluation results from)."""
    from huggingface_hub import ModelCardData

    pipeline_tag = "image-classification" if run.task == "image" else "text-classification"
    base_meta = _base_card_metadata(run)
    base_model = base_hub_id(run)
    strategy = (run.record.get("strategy") or {}).get("name")
    tags = ["textxfer", pipeline_tag, "transfer-learning"]
    if strategy:
        tags.append(f"strategy-{strategy}")
    if run.multi_label:
        tags.append("multi-label-classification")
    if mode == "adapter" or strategy == "lora":
        tags += ["lora", "peft"]
    if mode == "adapter" and base_model:
        tags.append(f"base_model:adapter:{base_model}")
    keys = [k for k in ("accuracy", "macro_f1") if any(k in (run.metrics.get(s) or {}) for s in ("test", "validation"))]
    data = ModelCardData(
        library_name="peft" if mode == "adapter" else "transformers", pipeline_tag=pipeline_tag,
        base_model=base_model, license=license or base_meta.get("license") or "other",
        language=base_meta.get("language") or None, datasets=_hub_datasets(run) or None,
        tags=list(dict.fromkeys(tags)), metrics=[METRIC_SPECS[k][0] for k in keys] or None,
        model_name=card_title(run, repo_id), eval_results=_eval_results(run, pipeline_tag) or None)
    meta = data.to_dict()
    order = ("library_name", "pipeline_tag", "base_model", "license", "language", "datasets", "tags", "metrics",
             "model-index")
    return {k: meta[k] for k in order if k in meta} | {k: v for k, v in meta.items() if k not in order}


def base_hub_id(run: Run) -> str | None:
    """The Hub repo id of the base checkpoint: the recipe's `model.name` when it is one; for a local or `package:`
    checkpoint, the id its own README loads it from (`from_pretrained('org/name')`, as sentence-transformers cards
    do), so the published card links its base model."""
    if is_hub_id(run.model_name):
        return run.model_name
    path = run.record.get("model_path")
    readme = Path(path) / "README.md" if path else None
    if readme is None or not readme.is_file():
        return None
    loaded = re.findall(r"""(?:from_pretrained|SentenceTransformer)\(\s*['"]([\w.-]+/[\w.-]+)['"]""",
                        readme.read_text(encoding="utf-8", errors="replace"))
    ids = [i for i in loaded if is_hub_id(i)]
    return max(set(ids), key=ids.count) if ids else None


def _eval_results(run: Run, pipeline_tag: str) -> list:
    from huggingface_hub import EvalResult

    task_name = "Image Classification" if pipeline_tag == "image-classification" else "Text Classification"
    datasets = _hub_datasets(run)
    data = run.record.get("data") or {}
    results = []
    for split in ("test", "validation"):
        metrics = run.metrics.get(split)
        if not isinstance(metrics, dict):
            continue
        src = (data.get(split) or {}).get("source")
        if datasets:
            name = kind = datasets[0]
        else:
            train_src = (data.get("train") or {}).get("source")
            name, kind = (display_source(train_src) if train_src else "custom"), "custom"
        for key in metric_keys(metrics, run.metrics.get("best_metric")):
            if key not in INDEX_METRICS and key != run.metrics.get("best_metric"):
                continue
            mtype, mname, args = METRIC_SPECS.get(key, (key, key.replace("_", " "), None))
            results.append(EvalResult(
                task_type=pipeline_tag, task_name=task_name, dataset_type=kind, dataset_name=name,
                dataset_split=split if src != "carved from train" else f"{split} (held out from train)",
                metric_type=mtype, metric_value=round(float(metrics[key]), 4), metric_name=mname,
                metric_args=dict(args) if args else None))
    return results
