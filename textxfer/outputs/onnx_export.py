"""`textxfer export RUN_DIR OUT`: a run's model as a folder that predicts with onnxruntime and tokenizers only.

The folder holds the ONNX graph (fp32, or int8 with `--quantize int8`), the run's `tokenizer.json` and
`textxfer_export.json` (labels, token limit, second-text column, thresholds, pooling, and what the exporter
measured). Before anything is kept the exported graph is checked against the PyTorch model on the run's own
validation texts (logits within 1e-4 of PyTorch's); a family the exporter cannot reproduce is refused. The folder
is written under a temporary name and renamed at the end: OUT is never left half-written."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textxfer.core.errors import UserError
from textxfer.core.files import replace_dir
from textxfer.core.layout import CONFIG_MAX_LENGTH, CONFIG_PAIR_COLUMN, find_model_dir
from textxfer.deploy.manifest import MANIFEST, MODEL_FILES, TOKENIZER_FILE, ExportManifest, is_export

PARITY_TOLERANCE = 1e-4
"""Largest difference allowed between the fp32 graph's logits and PyTorch's (times the logits' scale when >1)."""
PARITY_TEXTS = 256
AGREEMENT_TEXTS = 1000
CALIBRATION_TEXTS = 256
FALLBACK_TEXTS = [
    "The results were better than anyone expected.", "I would not recommend this to a friend.",
    "Shares fell sharply after the announcement on Tuesday.", "What time does the museum open?",
    "The team scored twice in the last ten minutes.", "a short one", "ok",
    "The new model is faster, cheaper and much easier to use than the old one, reviewers said.",
]
"""Texts the checks run on when the run kept no validation predictions (a bare model folder)."""


@dataclass
class ExportResult:
    folder: Path
    manifest: ExportManifest


def export_run(run_dir: str | Path, out: str | Path, quantize: str = "none", opset: int | None = None,
               overwrite: bool = False, say: Callable[[str], None] = lambda line: None,
               fp32_matmuls: int | None = None) -> ExportResult:
    """Export the model of `run_dir` (a run directory or its model folder) to the folder `out`. With
    `quantize="int8"`, `fp32_matmuls` weight MatMuls (those with the most outlying inputs) stay in fp32 (None:
    `textxfer.deploy.quantize.FP32_SHARE` of them)."""
    if quantize not in MODEL_FILES:
        raise UserError(f"--quantize {quantize!r}: choose one of {', '.join(MODEL_FILES)}.")
    if fp32_matmuls is not None and (fp32_matmuls < 0 or quantize != "int8"):
        raise UserError(f"--fp32-matmuls {fp32_matmuls}: give 0 or more, with --quantize int8 (it says how many "
                        "MatMuls of the int8 graph stay in fp32).")
    model_dir = find_model_dir(run_dir)
    out = Path(out)
    check_destination(model_dir, out, overwrite)
    from textxfer.modalities.detect import saved_task

    task = saved_task(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if task == "image":
            raise UserError(f"{model_dir} is an image classifier; `textxfer export` handles text classifiers "
                            "(bert, distilbert, roberta, xlm-roberta, electra, albert, deberta-v2). Predict "
                            "with the run directory: textxfer predict RUN_DIR --input IMAGES.")
        manifest = export_text(model_dir, tmp, quantize, opset, say, fp32_matmuls)
        manifest.source = {"model_dir": str(model_dir.resolve()), **source_versions()}
        manifest.write(tmp)
        if out.exists():
            replace_dir(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest)


def check_destination(model_dir: Path, out: Path, overwrite: bool) -> None:
    """OUT must not hold the run nor lie inside its model folder, and an existing OUT is replaced only with
    --overwrite and only when it is an earlier export or empty (never an unrelated folder)."""
    target = out.resolve()
    for protected in (model_dir.resolve(), model_dir.resolve().parent):
        if target == protected or target in protected.parents:
            raise UserError(f"{out} holds the run being exported ({model_dir}); export to another folder, e.g. "
                            f"{model_dir.resolve().parent / 'onnx'}.")
    if model_dir.resolve() in target.parents:  # the model folder is what `push` uploads and transformers loads
        raise UserError(f"{out} is inside the model folder being exported ({model_dir}); export next to it, e.g. "
                        f"{model_dir.resolve().parent / 'onnx'}.")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file; give a folder to export into.")
    if not overwrite:
        raise UserError(f"{out} already exists. Add --overwrite to replace it, or give another folder.")
    if any(out.iterdir()) and not is_export(out):
        raise UserError(f"{out} is not an earlier export (no {MANIFEST}) and is not empty: --overwrite replaces "
                        "only an exported folder. Give a new or empty folder.")


def export_text(model_dir: Path, tmp: Path, quantize: str, opset: int | None,
                say: Callable[[str], None], fp32_matmuls: int | None = None) -> ExportManifest:
    """Graph, tokenizer and manifest of a text classifier into `tmp`, checked against PyTorch."""

    from textxfer.backbones.load import input_names
    from textxfer.backbones.pooling import POOL_CONFIG_KEY
    from textxfer.deploy.text import OnnxTextClassifier
    from textxfer.modalities.text.predict import Classifier
    from textxfer.outputs.onnx_graph import export_graph, load_for_export, quiet_loggers, refusal

    reference = Classifier(model_dir, device="cpu")  # what `textxfer predict RUN_DIR` computes
    tok = reference.tokenizer
    if not getattr(tok, "is_fast", False):
        raise UserError(f"The tokenizer of {model_dir} has no fast (tokenizers) version, which the exported model "
                        "needs to run without transformers. Predict with the run directory instead.")
    model = load_for_export(model_dir, "text")
    cfg = model.config
    texts, pairs, where = check_texts(model_dir, reference.pair_column)
    encoded = tok(texts[:2], pairs[:2] if pairs else None, padding=True, truncation=True,
                  max_length=reference.max_length, return_tensors="pt")
    names = [k for k in input_names(model) if k in encoded]
    say(f"exporting {type(model).__name__} ({cfg.model_type}) to ONNX ...")
    export_graph(model, {k: encoded[k] for k in names}, tmp / MODEL_FILES["none"], opset)
    tok.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
    manifest = ExportManifest(
        task="text", family=cfg.model_type, model_file=MODEL_FILES["none"], quantize="none",
        labels=list(reference.labels), inputs=names, multi_label=reference.multi_label,
        thresholds=[float(t) for t in reference.thresholds] if reference.multi_label else None,
        max_length=int(getattr(cfg, CONFIG_MAX_LENGTH, None) or reference.max_length),
        pad_token_id=int(tok.pad_token_id), pair_column=getattr(cfg, CONFIG_PAIR_COLUMN, None),
        pooling="mean" if getattr(cfg, POOL_CONFIG_KEY, None) else "cls", opset=graph_opset(tmp / MODEL_FILES["none"]))
    if opset is not None and manifest.opset != opset:
        raise UserError(f"--opset {opset}: torch's exporter wrote opset {manifest.opset} instead (it targets opset 18 "
                        "and later). Give an opset it supports, or leave --opset out.")
    manifest.write(tmp)
    exported = OnnxTextClassifier(tmp)
    n = min(len(texts), PARITY_TEXTS)
    want = reference.logits(texts[:n], pairs[:n] if pairs else None)
    got = exported.logits(texts[:n], pairs[:n] if pairs else None)
    diff = float(np.abs(got - want).max())
    tolerance = PARITY_TOLERANCE * max(1.0, float(np.abs(want).max()))
    if not diff <= tolerance:
        raise refusal(model, f"the exported graph's logits differ from PyTorch's by up to {diff:.3g} on {n} {where} "
                             f"(allowed {tolerance:.1g})")
    manifest.checks["fp32_parity"] = {"max_abs_logit_difference": diff, "texts": n, "on": where}
    say(f"fp32 graph: logits within {diff:.1e} of PyTorch on {n} {where}")
    if quantize == "int8":
        int8_file = tmp / MODEL_FILES["int8"]
        feeds = [exported.feed(batch) for batch in batches(exported.encode(texts[:CALIBRATION_TEXTS],
                                                                           pairs[:CALIBRATION_TEXTS] if pairs else None))
                 ] if fp32_matmuls != 0 else []
        from textxfer.deploy.quantize import quantize_int8

        with quiet_loggers():  # the quantizer logs a pre-processing hint per call
            info = quantize_int8(tmp / MODEL_FILES["none"], int8_file, feeds, fp32_matmuls)
        m = min(len(texts), AGREEMENT_TEXTS)
        full = exported.logits(texts[:m], pairs[:m] if pairs else None)
        del exported
        (tmp / MODEL_FILES["none"]).unlink()
        manifest.model_file, manifest.quantize = MODEL_FILES["int8"], "int8"
        manifest.write(tmp)
        small = OnnxTextClassifier(tmp).logits(texts[:m], pairs[:m] if pairs else None)
        agree = same_decisions(full, small, manifest)
        manifest.checks["int8"] = {**info, "agreement_with_fp32": agree, "texts": m, "on": where}
        say(f"int8 graph: {len(info['fp32_matmuls'])} of {info['weight_matmuls']} weight MatMuls kept in fp32; "
            f"same decisions as fp32 on {100 * agree:.2f}% of {m} {where}")
    return manifest


def check_texts(model_dir: Path, pair_column) -> tuple[list[str], list[str] | None, str]:
    """(texts, second texts or None, what they are): the run's validation texts where it kept them
    (predictions/validation.jsonl), else a few fixed sentences. Only the first AGREEMENT_TEXTS are read."""
    run = model_dir.parent
    for split in ("validation", "test", "train"):
        path = run / "predictions" / f"{split}.jsonl"
        if not path.is_file():
            continue
        texts, pairs = [], []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(texts) >= AGREEMENT_TEXTS:
                    break
                row = json.loads(line)
                if isinstance(row.get("text"), str):
                    texts.append(row["text"])
                    pairs.append(str(row.get("text_pair", "")))
        if len(texts) >= 2:
            return texts, pairs if pair_column is not None else None, f"{split} texts of the run"
    fixed = list(FALLBACK_TEXTS)
    return fixed, (fixed[::-1] if pair_column is not None else None), "fixed sentences (the run kept no predictions)"


def same_decisions(a: np.ndarray, b: np.ndarray, manifest: ExportManifest) -> float:
    """Share of rows where two sets of logits give the same prediction: the top label, or (multi-label) the same
    labels at or above their thresholds."""
    from textxfer.deploy.decisions import probabilities

    if manifest.multi_label:
        limits = np.asarray(manifest.thresholds)
        pa, pb = probabilities(a, True) >= limits, probabilities(b, True) >= limits
        return float(np.mean(np.all(pa == pb, axis=1)))
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def batches(encodings: list, size: int = 32) -> list[list]:
    """Calibration batches of similar lengths (sorted, as prediction batches are)."""
    ordered = sorted(encodings, key=lambda e: -len(e.ids))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def graph_opset(file: Path) -> int | None:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def source_versions() -> dict:
    """Versions of what made the export, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("textxfer", "torch", "transformers", "onnx", "onnxruntime", "onnxscript", "tokenizers"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found
