"""Open an exported ONNX model with onnxruntime, and say clearly when the file is not the model the manifest
describes (truncated by a failed copy, another model's file, not ONNX at all)."""

from __future__ import annotations

from pathlib import Path

from textxfer.core.errors import UserError
from textxfer.deploy.manifest import LOGITS, ExportManifest


def open_session(file: Path, manifest: ExportManifest, threads: int | None = None):
    """An `onnxruntime.InferenceSession` on `file` (CPU, or CUDA where onnxruntime-gpu has it), checked to take
    the manifest's inputs and give (batch, labels) logits. `threads`: intra-op threads (default: onnxruntime's,
    one per physical core)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("Predicting with an exported model needs onnxruntime: pip install 'textxfer[onnx]' "
                        "(or pip install onnxruntime tokenizers).") from None
    if not file.is_file():
        raise UserError(f"{file} does not exist: the export's {file.parent.name}/textxfer_export.json names it as "
                        "the model. Export the run again: textxfer export RUN_DIR OUT --overwrite.")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initializers are noise
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(str(file), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{file} cannot be read as an ONNX model ({first[:300]}). It may be truncated (a copy "
                        "that did not finish) or not an ONNX file; export the run again: textxfer export RUN_DIR "
                        "OUT --overwrite.") from None
    check_graph(session, file, manifest)
    return session


def check_graph(session, file: Path, manifest: ExportManifest) -> None:
    """The graph must be the exported classifier: the manifest's inputs and one (batch, labels) output."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = session.get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    expected = "inputs " + ", ".join(manifest.inputs) + f" and a `{LOGITS}` output of {len(manifest.labels)} labels"
    if sorted(inputs) != sorted(manifest.inputs) or [o.name for o in outputs] != [LOGITS] or (
            isinstance(width, int) and width != len(manifest.labels)):
        found = f"inputs {', '.join(inputs) or 'none'}; outputs " + ", ".join(
            f"{o.name} {o.shape}" for o in outputs)
        raise UserError(f"{file} is not the model this export describes: expected {expected}, found {found}. "
                        "Another model's file may have been copied over it; export the run again: textxfer export "
                        "RUN_DIR OUT --overwrite.")
