"""Model cards written from a finished run, so a pushed repo says what it is: the Hub's YAML metadata (built in
`card_metadata`) and the sections a reader needs to trust and reuse the model: base model, strategy and what was
frozen, data and labels, hyper-parameters, metrics (per class too), training time and hardware, how to reproduce
it, and a usage snippet that runs as written.

Everything comes from the run directory (run.json, metrics.json, recipe.yaml, the model and adapter folders);
nothing is invented. Local paths are shortened to file names so a card does not publish a user's directories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from textxfer.outputs.card_metadata import (
    METRIC_SPECS,
    card_metadata,
    card_title,
    display_command,
    display_source,
    is_hub_id,
    metric_keys,
    published_recipe,
)
from textxfer.outputs.card_onnx import onnx_usage
from textxfer.outputs.finished_run import Run, read_run, source_folder

EXAMPLE_TEXT = "This is an example sentence to classify."


# ---------------------------------------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------------------------------------- sections


def _summary(run: Run, mode: str) -> str:
    best_name = run.metrics.get("best_metric") or "accuracy"
    parts = [f"A {'multi-label ' if run.multi_label else ''}{run.task} classifier over {len(run.labels)} labels, "
             f"adapted from `{display_source(run.model_name)}` with textxfer "
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
    rows = [text, "", "| | |", "|---|---|", f"| Base model | `{display_source(run.model_name)}` |"]
    if groups is not None:
        rows.append(f"| Layer groups | {groups} |")
    rows.append(f"| Frozen | {', '.join(f'`{f}`' for f in frozen) if frozen else 'nothing'} |")
    trainable, total = run.record.get("trainable_params"), run.record.get("total_params")
    if isinstance(trainable, int) and isinstance(total, int) and total:
        rows.append(f"| Trainable parameters | {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) |")
    if not is_hub_id(run.model_name):
        rows += ["", f"The base model `{display_source(run.model_name)}` is a local checkpoint, not a Hub "
                 "repository, so the metadata names no `base_model`."]
    return rows


def _data_text(run: Run) -> list[str]:
    rows = ["| Split | Examples | Source | Fingerprint |", "|---|---:|---|---|"]
    for split, info in (run.record.get("data") or {}).items():
        if isinstance(info, dict):
            rows.append(f"| {split} | {_cell(info.get('rows'))} | {_cell(display_source(info.get('source')))} "
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
            keys += [k for k in metric_keys(m[s], m.get("best_metric")) if k not in keys]
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
        rows += ["", "The original command was:", "", "```bash", display_command(str(command)), "```"]
    rows += ["", "<details><summary>recipe.yaml</summary>", "", "```yaml", published_recipe(run.recipe_text).rstrip(),
             "```", "", "</details>"]
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
        base = display_source(run.model_name)  # a local folder by its name only: the card is published
        return ("import torch\nfrom PIL import Image\nfrom peft import PeftModel\n"
                "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
                f"labels = {labels}\n"
                f"base = AutoModelForImageClassification.from_pretrained(\n    {_py_str(base)}, "
                "num_labels=len(labels), id2label=dict(enumerate(labels)),\n    label2id={label: i for i, label "
                "in enumerate(labels)}, ignore_mismatched_sizes=True)\n"
                f"model = PeftModel.from_pretrained(base, {_py_str(ref)}{rev}).eval()\n"
                f"processor = AutoImageProcessor.from_pretrained({_py_str(base)})\n"
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
            rows += ["", f"Note: the adapter's base model (`{display_source(base)}`) is a local folder. Elsewhere, "
                     "load the base model yourself and apply the adapter with `peft.PeftModel.from_pretrained(base, "
                     "...)`."]
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
               license: str | None = None, onnx: str | None = None) -> str:
    """README.md for a run: Hub metadata + the sections above. Without `repo_id` the usage snippet loads the
    local folder, so `textxfer card RUN_DIR` prints something that runs as written on this machine. `onnx`
    (`none` or `int8`): the repo also holds the export in `onnx/` (`textxfer push --onnx`); Usage says how to
    load it without torch."""
    run = read_run(run_dir)
    folder = source_folder(run, mode)
    meta = card_metadata(run, mode, repo_id, license)
    ref = repo_id or str(folder)
    body = [f"# {card_title(run, repo_id)}", "", _summary(run, mode)]
    description = run.recipe.get("description")
    if description:
        body += ["", str(description).strip()]
    sections = [
        ("Usage", _usage_text(run, mode, ref, revision if repo_id else None) + (
            onnx_usage(repo_id, revision, onnx, run.multi_label) if onnx and repo_id else [])),
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
