"""A saved classifier as an ONNX graph, through `torch.onnx.export` (the torch.export-based exporter; Optimum's
exporter requires transformers < 4.58 and cannot serve transformers 5).

Text models take (batch, tokens) inputs with both sizes free; image models take (batch, 3, H, W) pixels with the
batch free. Models are exported with transformers' eager attention: a plain graph of MatMul and Softmax that
onnxruntime runs as fast as the fused kernels on CPU and that quantises cleanly. A family the exporter cannot
trace is refused, naming it, with what to use instead (`refusal`)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from textxfer.core.errors import UserError
from textxfer.deploy.manifest import LOGITS

SIZE_FOR_EXTERNAL_DATA = 1_500_000_000
"""Bytes of weights above which they go to a `.onnx.data` file next to the graph (protobuf's 2 GB limit)."""


def load_for_export(model_dir: Path, task: str):
    """The saved model in fp32, in eval mode, with eager attention where the family has it."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    from textxfer.backbones.load import SAFE_LOADING

    auto = AutoModelForImageClassification if task == "image" else AutoModelForSequenceClassification
    try:
        model = auto.from_pretrained(model_dir, attn_implementation="eager", **SAFE_LOADING)
    except (ValueError, TypeError):  # a family without a choice of attention
        model = auto.from_pretrained(model_dir, **SAFE_LOADING)
    return model.float().eval()


class LogitsOnly(torch.nn.Module):
    """The classifier with named tensor arguments and one output: the logits (what the graph returns)."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "pixel_values": pixel_values}
        return self.model(**{k: given[k] for k in self.names}).logits.float()


def export_graph(model: torch.nn.Module, example: dict[str, torch.Tensor], file: Path, opset: int | None) -> None:
    """Write `model` as ONNX to `file`: inputs named as in `example`, output `logits`; dimension 0 (and for token
    inputs dimension 1) free. Raises `UserError` through `refusal` when the exporter fails."""
    names = list(example)
    batch = torch.export.Dim("batch")
    tokens = torch.export.Dim("tokens")
    shapes = {k: ({0: batch} if k == "pixel_values" else {0: batch, 1: tokens}) for k in names}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(), quiet_loggers():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(LogitsOnly(model, names), (), kwargs=example, input_names=names,
                                        output_names=[LOGITS], dynamic_shapes=shapes, opset_version=opset,
                                        dynamo=True)
            program.save(str(file), external_data=size > SIZE_FOR_EXTERNAL_DATA)
    except UserError:
        raise
    except Exception as e:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        raise refusal(model, f"torch.onnx.export failed: {first_line(e)}") from None


def refusal(model: torch.nn.Module, why: str) -> UserError:
    """The family cannot be exported faithfully: name it and what to do instead."""
    family = getattr(model.config, "model_type", type(model).__name__)
    return UserError(
        f"`{family}` models ({type(model).__name__}) cannot be exported to ONNX: {why}. Predict with the run "
        "directory itself (textxfer predict RUN_DIR / textxfer.load(RUN_DIR), which needs torch), or train the "
        "model on a family the exporter handles (text: bert, distilbert, roberta, xlm-roberta, electra, albert, "
        "deberta-v2; images: vit, convnext, resnet, efficientnet; see docs/deploy.md).")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


@contextlib.contextmanager
def quiet_loggers():
    """The exporter and onnxscript log each step at INFO/WARNING; only failures matter here."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
