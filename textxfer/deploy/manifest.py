"""What an exported folder holds and how it is described: `textxfer_export.json` next to the ONNX model and the
tokenizer, with everything the PyTorch run directory would have told the predictor (labels, token limit, second
text column, multi-label thresholds, pooling), so nothing is lost on the way to deployment."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from textxfer.core.errors import UserError

MANIFEST = "textxfer_export.json"
FORMAT_VERSION = 1
MODEL_FILES = {"none": "model.onnx", "int8": "model_int8.onnx"}
"""The ONNX file of each `--quantize` choice."""
TOKENIZER_FILE = "tokenizer.json"
LOGITS = "logits"
"""Name of the graph's one output: a (batch, labels) float32 array of logits."""


@dataclass
class ExportManifest:
    """The contents of `textxfer_export.json` (see docs/deploy.md, "The exported folder")."""

    task: str
    """`text` or `image`."""
    family: str
    """The architecture (`model_type` of the config: bert, roberta, vit, ...)."""
    model_file: str
    quantize: str
    """`none` (fp32 weights) or `int8`."""
    labels: list[str]
    inputs: list[str]
    """The graph's inputs, in order: for text, a subset of input_ids, attention_mask, token_type_ids."""
    multi_label: bool = False
    thresholds: list[float] | None = None
    """Multi-label: per label, the probability at or above which it is predicted."""
    max_length: int | None = None
    """Text: the token limit the run trained and scored at; longer texts are cut there."""
    pad_token_id: int = 0
    pair_column: str | int | None = None
    """Sentence-pair models: the column of the second text the run trained with."""
    pooling: str = "cls"
    """`mean` where the run appended textxfer's mean-pooling layer (it is inside the graph), else `cls`."""
    image: dict | None = None
    """Image models: how pictures become pixels (see `textxfer.deploy.pixels`)."""
    opset: int | None = None
    format_version: int = FORMAT_VERSION
    source: dict = field(default_factory=dict)
    """Where it came from: run directory, textxfer/torch/onnx versions."""
    checks: dict = field(default_factory=dict)
    """What the exporter measured: fp32 parity with PyTorch, int8 agreement, which layers stayed fp32."""

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")


def is_export(path: str | Path) -> bool:
    """An exported folder (holding the manifest), or an .onnx file inside one."""
    return export_dir(path) is not None


def export_dir(path: str | Path) -> Path | None:
    p = Path(path)
    folder = p.parent if p.suffix.lower() == ".onnx" else p
    return folder if (folder / MANIFEST).is_file() else None


def read_manifest(path: str | Path) -> tuple[Path, ExportManifest]:
    """(folder, manifest) of an exported folder or of an .onnx file in one. An .onnx file given directly is
    the model used, whatever the manifest names."""
    p = Path(path)
    folder = export_dir(p)
    if folder is None:
        if p.suffix.lower() == ".onnx":
            raise UserError(f"{p} is not part of a textxfer export: there is no {MANIFEST} next to it (labels, "
                            "tokenizer and token limit are read from there). Give the folder `textxfer export` "
                            "wrote, or export the run again: textxfer export RUN_DIR OUT.")
        raise UserError(f"{p} is not an exported model folder (no {MANIFEST} in it).")
    file = folder / MANIFEST
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} cannot be read ({e}). Export the run again: textxfer export RUN_DIR OUT "
                        "--overwrite.") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{file} is not a textxfer export manifest of format {FORMAT_VERSION} "
                        f"(format_version {raw.get('format_version') if isinstance(raw, dict) else None!r}). "
                        "Export the run again with this textxfer version.")
    known = set(ExportManifest.__dataclass_fields__)
    missing = [k for k in ("task", "family", "model_file", "quantize", "labels", "inputs") if k not in raw]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}. Export the run again: textxfer export RUN_DIR OUT "
                        "--overwrite.")
    manifest = ExportManifest(**{k: v for k, v in raw.items() if k in known})
    if p.suffix.lower() == ".onnx":
        manifest.model_file = p.name
    return folder, manifest
