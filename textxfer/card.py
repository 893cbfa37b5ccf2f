"""Model cards written from a finished run, so a pushed repo says what it is: the Hub's YAML metadata
(`library_name`, `pipeline_tag`, `base_model`, `license`, `datasets`, `tags`, `model-index`) and the sections a
reader needs to trust and reuse it: base model, strategy and what was frozen, data and labels,
hyper-parameters, metrics (per class too), training time and hardware, how to reproduce it, and a usage snippet
that runs as written.

Everything comes from the run directory (run.json, metrics.json, recipe.yaml, the model and adapter folders);
nothing is invented. Local paths are shortened to file names so a card does not publish a user's directories.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textxfer.errors import UserError

MODES = ("merged", "adapter")
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
EXAMPLE_TEXT = "This is an example sentence to classify."


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


# ---------------------------------------------------------------------------------------------- helpers


def is_hub_id(name: str) -> bool:
    """Whether a model name is a Hub repo id (not a local folder or a `package:` checkpoint)."""
    if not name or name.startswith((".", "/", "~", "package:")) or name.count("/") > 1:
        return False
    if Path(name).expanduser().exists():
        return False
    return bool(HUB_ID_RE.match(name)) and "--" not in name and ".." not in name


def _display_source(source: Any) -> str:
    """A data source without the user's directories: Hub/package names as they are, local files by name."""
    if isinstance(source, dict):
        return ", ".join(f"{k}: {_display_source(v)}" for k, v in source.items())
    if isinstance(source, (list, tuple)):
        return ", ".join(_display_source(v) for v in source)
    text = str(source)
    if text.startswith(("hub:", "package:")) or not text.startswith(("/", "~")):
        return text
    return Path(text).name


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


def _fmt(value: Any, digits: bool = True) -> str:
    """Metrics with 4 decimals; settings (`digits=False`) as written (1e-4 stays 0.0001, 3.0 stays 3)."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float) and not digits:
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "—"
    return str(value)


def _cell(value: Any, digits: bool = True) -> str:
    return _fmt(value, digits).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "unknown"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {sec} s"


def _metric_keys(metrics: dict, best: str | None) -> list[str]:
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("epoch", "step")]
    order = [best] + list(METRIC_SPECS) if best else list(METRIC_SPECS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def _title(run: Run, repo_id: str | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    return run.dir.resolve().name


# ---------------------------------------------------------------------------------------------- metadata


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
        model_name=_title(run, repo_id), eval_results=_eval_results(run, pipeline_tag) or None)
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
            name, kind = (_display_source(train_src) if train_src else "custom"), "custom"
        for key in _metric_keys(metrics, run.metrics.get("best_metric")):
            if key not in INDEX_METRICS and key != run.metrics.get("best_metric"):
                continue
            mtype, mname, args = METRIC_SPECS.get(key, (key, key.replace("_", " "), None))
            results.append(EvalResult(
                task_type=pipeline_tag, task_name=task_name, dataset_type=kind, dataset_name=name,
                dataset_split=split if src != "carved from train" else f"{split} (held out from train)",
                metric_type=mtype, metric_value=round(float(metrics[key]), 4), metric_name=mname,
                metric_args=dict(args) if args else None))
    return results


# ---------------------------------------------------------------------------------------------- sections


def _summary(run: Run, mode: str) -> str:
    best_name = run.metrics.get("best_metric") or "accuracy"
    parts = [f"A {'multi-label ' if run.multi_label else ''}{run.task} classifier over {len(run.labels)} labels, "
             f"adapted from `{run.model_name}` with textxfer "
             f"(strategy `{(run.record.get('strategy') or {}).get('name', '?')}`)."]
    for split in ("test", "validation"):
        value = (run.metrics.get(split) or {}).get(best_name)
        if isinstance(value, (int, float)):
            parts.append(f"{split.capitalize()} {best_name}: **{value:.4f}**.")
            break
    if mode == "adapter":
        parts.append("This repository holds the LoRA adapter and the trained head, not the full weights: load "
                     "it with PEFT on top of the base model (see Usage).")
    else:
        parts.append("The weights are complete (adapters, if any, are merged): plain `transformers` loads them.")
    return " ".join(parts)


def _strategy_text(run: Run, mode: str) -> list[str]:
    s = run.record.get("strategy") or {}
    name = s.get("name")
    groups = run.record.get("layer_groups")
    frozen = run.record.get("frozen") or []
    lora = s.get("lora") or {}
    if name == "head":
        text = "Only the new classification head (and any parameter new to the checkpoint) was trained; " \
               "the pretrained encoder stayed frozen."
    elif name == "freeze":
        text = (f"The embeddings and the lower {s.get('freeze_layers', 0)} of {groups or '?'} encoder layer groups "
                "were frozen; the upper layers and the head were fine-tuned.")
    elif name == "lora":
        targets = ", ".join(f"`{t}`" for t in lora.get("target_modules") or []) or "the attention and MLP linears"
        scope = f"the top {s['lora_layers']} layers" if s.get("lora_layers") else "all layers"
        text = (f"LoRA adapters (rank {lora.get('r', '?')}, alpha {lora.get('alpha', '?')}, dropout "
                f"{lora.get('dropout', '?')}) on {targets} of {scope}, trained together with the new head; the "
                "pretrained weights stayed frozen.")
        text += (" This repository holds the adapter and the head (PEFT `modules_to_save`)." if mode == "adapter"
                 else " The adapters are merged into the published weights.")
    elif name == "full":
        text = "All weights were fine-tuned."
    else:
        text = f"Strategy `{name}`."
    rows = [text, "", "| | |", "|---|---|", f"| Base model | `{run.model_name}` |"]
    if groups is not None:
        rows.append(f"| Layer groups | {groups} |")
    rows.append(f"| Frozen | {', '.join(f'`{f}`' for f in frozen) if frozen else 'nothing'} |")
    trainable, total = run.record.get("trainable_params"), run.record.get("total_params")
    if isinstance(trainable, int) and isinstance(total, int) and total:
        rows.append(f"| Trainable parameters | {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) |")
    if not is_hub_id(run.model_name):
        rows += ["", f"The base model `{run.model_name}` is a local checkpoint, not a Hub repository, so the "
                 "metadata names no `base_model`."]
    return rows


def _data_text(run: Run) -> list[str]:
    rows = ["| Split | Examples | Source | Fingerprint |", "|---|---:|---|---|"]
    for split, info in (run.record.get("data") or {}).items():
        if isinstance(info, dict):
            rows.append(f"| {split} | {_cell(info.get('rows'))} | {_cell(_display_source(info.get('source')))} "
                        f"| `{_cell(info.get('fingerprint'))}` |")
    kind = "multi-label: each example can carry several" if run.multi_label else "one label per example"
    rows += ["", f"Labels ({len(run.labels)}, {kind}); the ids are the model's output indices "
             "(`config.id2label`):", "", "| id | label |", "|---:|---|"]
    rows += [f"| {i} | {_cell(label)} |" for i, label in enumerate(run.labels)]
    return rows


def _hyper_text(run: Run) -> list[str]:
    rows = ["| Setting | Value |", "|---|---|"]
    model = run.recipe.get("model") or {}
    for key in ("max_length", "dropout"):
        if key in model:
            rows.append(f"| model.{key} | {_cell(model[key], False)} |")
    strategy = run.recipe.get("strategy") or {}
    for key, value in strategy.items():
        if isinstance(value, dict):
            rows += [f"| strategy.{key}.{k} | {_cell(v, False)} |" for k, v in value.items()]
        else:
            rows.append(f"| strategy.{key} | {_cell(value, False)} |")
    for key, value in (run.recipe.get("training") or {}).items():
        rows.append(f"| training.{key} | {_cell(value, False)} |")
    return rows


def _metrics_text(run: Run) -> list[str]:
    m = run.metrics
    splits = [s for s in ("validation", "test") if isinstance(m.get(s), dict)]
    rows: list[str] = []
    best = m.get("best") or {}
    if best:
        rows.append(f"The model is the checkpoint with the best validation `{m.get('best_metric')}` "
                    f"(epoch {_fmt(best.get('epoch'), False)}, step {_fmt(best.get('step'))}).")
        rows.append("")
    if splits:
        keys: list[str] = []
        for s in splits:
            keys += [k for k in _metric_keys(m[s], m.get("best_metric")) if k not in keys]
        rows += ["| Metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for k in keys:
            rows.append(f"| {METRIC_SPECS.get(k, (k, k))[1]} | "
                        + " | ".join(_cell(m[s].get(k)) for s in splits) + " |")
    per_class = m.get("per_class") or {}
    for split in ("test", "validation"):
        table = per_class.get(split)
        if not table:
            continue
        rows += ["", f"Per class ({split}):", "", "| Label | Precision | Recall | F1 | Support |",
                 "|---|---:|---:|---:|---:|"]
        for label, r in table.items():
            rows.append(f"| {_cell(label)} | {_cell(r.get('precision'))} | {_cell(r.get('recall'))} | "
                        f"{_cell(r.get('f1'))} | {_cell(r.get('support'))} |")
        break
    thresholds = m.get("thresholds")
    if thresholds:
        pairs = ", ".join(f"{label}: {_fmt(t)}" for label, t in zip(run.labels, thresholds, strict=False))
        tuned = (run.recipe.get("training") or {}).get("threshold", "global") in ("global", "per_label")
        how = ("fixed by `training.threshold`" if not tuned else
               "tuned on validation" if m.get("validation") else
               "no validation split: the one that maximises the F1 expected under the model's probabilities on the "
               "training texts")
        rows += ["", f"Decision thresholds per label ({how}): {pairs}."]
    return rows or ["No evaluation metrics were recorded."]


def _hardware_text(run: Run) -> list[str]:
    r = run.record
    hw = r.get("hardware") or {}
    rows = ["| | |", "|---|---|",
            f"| Training time | {_duration(r.get('train_seconds'))} |",
            f"| Started / finished | {_cell(r.get('started_at'))} / {_cell(r.get('finished_at'))} |",
            f"| Device | {_cell(hw.get('device'))}{' (' + _cell(hw.get('gpu')) + ')' if hw.get('gpu') else ''} |",
            f"| CPU | {_cell(hw.get('cpu'))} ({_cell(hw.get('torch_threads'))} torch threads) |",
            f"| Processes | {_cell(r.get('num_processes', 1))} |"]
    versions = r.get("versions") or {}
    if versions:
        rows.append("| Versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " |")
    return rows


def _reproduce_text(run: Run) -> list[str]:
    command = run.record.get("command")
    if isinstance(command, list):
        command = " ".join(command)
    rows = ["`recipe.yaml` in this repository is the resolved recipe (every key, defaults filled in). With the "
            "same data in place and textxfer installed:", "", "```bash", "textxfer train recipe.yaml", "```"]
    if command:
        rows += ["", "The original command was:", "", "```bash", str(command), "```"]
    rows += ["", "<details><summary>recipe.yaml</summary>", "", "```yaml", run.recipe_text.rstrip(), "```", "",
             "</details>"]
    return rows


def _py_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def usage_snippet(run: Run, mode: str, ref: str, revision: str | None = None) -> str:
    """Python that loads the model from `ref` (a repo id or a local folder) and classifies; runs as written."""
    rev = f", revision={_py_str(revision)}" if revision else ""
    labels = "[" + ", ".join(_py_str(label) for label in run.labels) + "]"
    if run.task == "image":
        if mode == "merged":
            return (f'from transformers import pipeline\n\nclassifier = pipeline("image-classification", '
                    f'model={_py_str(ref)}{rev})\nprint(classifier("path/to/image.jpg"))\n')
        return ("import torch\nfrom PIL import Image\nfrom peft import PeftModel\n"
                "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
                f"labels = {labels}\n"
                f"base = AutoModelForImageClassification.from_pretrained(\n    {_py_str(run.model_name)}, "
                "num_labels=len(labels), id2label=dict(enumerate(labels)),\n    label2id={label: i for i, label "
                "in enumerate(labels)}, ignore_mismatched_sizes=True)\n"
                f"model = PeftModel.from_pretrained(base, {_py_str(ref)}{rev}).eval()\n"
                f"processor = AutoImageProcessor.from_pretrained({_py_str(run.model_name)})\n"
                'inputs = processor(images=Image.open("path/to/image.jpg").convert("RGB"), return_tensors="pt")\n'
                "with torch.no_grad():\n    probs = model(**inputs).logits.softmax(-1)[0]\n"
                "print(model.config.id2label[int(probs.argmax())], round(float(probs.max()), 4))\n")
    thresholds = run.metrics.get("thresholds")
    if mode == "merged":
        code = (f'from transformers import pipeline\n\nclassifier = pipeline("text-classification", '
                f"model={_py_str(ref)}{rev})\n")
        if run.multi_label:
            th = {label: float(t) for label, t in zip(run.labels, thresholds, strict=False)} if thresholds else None
            code += (f"thresholds = {json.dumps(th, ensure_ascii=False)}\n" if th else "")
            code += (f"scores = classifier([{_py_str(EXAMPLE_TEXT)}], top_k=None, truncation=True)[0]"
                     "  # sigmoid score per label\n"
                     "print([s[\"label\"] for s in scores if s[\"score\"] >= "
                     + ("thresholds[s[\"label\"]]" if th else "0.5") + "])\n")
        else:
            # truncation: the tokenizer's model_max_length is the run's model.max_length, what training read
            code += f"print(classifier([{_py_str(EXAMPLE_TEXT)}], truncation=True))\n"
        return code
    problem = ', problem_type="multi_label_classification"' if run.multi_label else ""
    code = ("import torch\nfrom peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoTokenizer\n\n"
            f"labels = {labels}  # also in textxfer_labels.json\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f"    {_py_str(ref)}{rev}, num_labels=len(labels), id2label=dict(enumerate(labels)),\n"
            f"    label2id={{label: i for i, label in enumerate(labels)}}{problem},\n).eval()\n"
            f"tokenizer = AutoTokenizer.from_pretrained({_py_str(ref)}{rev})\n"
            f"inputs = tokenizer([{_py_str(EXAMPLE_TEXT)}], return_tensors=\"pt\", truncation=True)\n")
    if run.multi_label:
        th = [float(t) for t in thresholds] if thresholds and len(thresholds) == len(run.labels) else None
        code += (f"thresholds = {th}  # per label, as the run set them (see above)\n" if th else "")
        code += ("with torch.no_grad():\n    probs = model(**inputs).logits.sigmoid()[0]\n"
                 "print([model.config.id2label[i] for i, p in enumerate(probs.tolist()) if p >= "
                 + ("thresholds[i]" if th else "0.5") + "])\n")
    else:
        code += ("with torch.no_grad():\n    probs = model(**inputs).logits.softmax(-1)[0]\n"
                 "print(model.config.id2label[int(probs.argmax())], round(float(probs.max()), 4))\n")
    return code


def _usage_text(run: Run, mode: str, ref: str, revision: str | None) -> list[str]:
    install = "pip install transformers torch" if mode == "merged" else "pip install peft transformers torch"
    if run.task == "image":
        install += " pillow"
    rows = ["```bash", install, "```", "", "```python", usage_snippet(run, mode, ref, revision).rstrip(), "```"]
    if mode == "adapter" and run.task != "image":
        rows += ["", "PEFT builds the base model named in `adapter_config.json` and applies the adapter and the "
                 "trained head; passing the labels keeps their names (`id2label`)."]
    if mode == "adapter":
        base = _adapter_base(run)
        if base and not is_hub_id(base):
            rows += ["", f"Note: the adapter's base model (`{base}`) is a local folder. Elsewhere, load the base "
                     "model yourself and apply the adapter with `peft.PeftModel.from_pretrained(base, ...)`."]
    return rows


def _adapter_base(run: Run) -> str | None:
    cfg = run.dir / "adapter" / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------- the card


def model_card(run_dir: str | Path, mode: str = "merged", repo_id: str | None = None, revision: str | None = None,
               license: str | None = None) -> str:
    """README.md for a run: Hub metadata + the sections above. Without `repo_id` the usage snippet loads the
    local folder, so `textxfer card RUN_DIR` prints something that runs as written on this machine."""
    run = read_run(run_dir)
    folder = source_folder(run, mode)
    meta = card_metadata(run, mode, repo_id, license)
    ref = repo_id or str(folder)
    body = [f"# {_title(run, repo_id)}", "", _summary(run, mode)]
    description = run.recipe.get("description")
    if description:
        body += ["", str(description).strip()]
    sections = [
        ("Usage", _usage_text(run, mode, ref, revision if repo_id else None)),
        ("Base model and strategy", _strategy_text(run, mode)),
        ("Data and labels", _data_text(run)),
        ("Results", _metrics_text(run)),
        ("Hyper-parameters", _hyper_text(run)),
        ("Training time and hardware", _hardware_text(run)),
        ("Reproduce", _reproduce_text(run)),
    ]
    for title, rows in sections:
        body += ["", f"## {title}", "", *rows]
    if meta["license"] == "other" and not license:
        body += ["", "## License", "", "No license was given and none was found for the base model: the base "
                 "model's license applies. Set one with `textxfer push --license`."]
    body += ["", "---", "", f"*Card written by textxfer {run.record.get('textxfer_version') or ''} from the run "
             "directory (run.json, metrics.json, recipe.yaml).*"]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n"
