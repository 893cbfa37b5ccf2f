"""int8 weights for an exported fp32 graph (`textxfer export --quantize int8`), chosen so that the quantised model
keeps the fp32 model's decisions.

onnxruntime's dynamic quantisation stores each weight matrix in int8 and quantises the activations entering it
on the fly, one scale per tensor. Where those activations have outlier channels (a few features far larger than
the rest, as BERT-style encoders have after some layer norms and in the feed-forward blocks), one scale per
tensor leaves the ordinary features only a few int8 steps, and most of the error comes from those few matrices.
So: weights per output channel and in 7 bits (`reduce_range`: no overflow in the u8 x s8 products on CPUs
without VNNI), the word-embedding table in int8 (most of the file), and the MatMuls whose inputs have the widest
range relative to their typical size on calibration inputs left in fp32: `FP32_SHARE` of them, or as many as
`textxfer export --fp32-matmuls N` says. docs/deploy.md has the measurements behind these choices.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FP32_SHARE = 1 / 12
"""Share of the weight MatMuls kept in fp32 by default, those with the most outlying inputs (MiniLM-L6: 3 of 36)."""


def weight_matmuls(model) -> list:
    """MatMul nodes whose second input is a stored weight (not two activations, as in attention scores)."""
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def embedding_gathers(model) -> list[str]:
    """Gathers from a stored table indexed by the token ids: the word embeddings (position and segment tables
    are small and are left in fp32)."""
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights
            and n.input[1] == "input_ids"]


def outlier_scores(model, feeds: Iterable[dict[str, np.ndarray]], nodes: list) -> dict[str, float]:
    """Per MatMul, the mean over calibration batches of (max - min) / root-mean-square of its input, over real
    tokens only (padding excluded through the attention mask): how few int8 steps an ordinary value gets."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = list(dict.fromkeys(n.input[0] for n in nodes))
    known = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="textxfer-quantize-") as tmp:
        path = os.path.join(tmp, "probe.onnx")
        onnx.save(probe, path, save_as_external_data=probe.ByteSize() > 1_500_000_000)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ratios: dict[str, list[float]] = {name: [] for name in wanted}
        for feed in feeds:
            real = feed["attention_mask"].astype(bool) if "attention_mask" in feed else None
            for name, x in zip(wanted, session.run(wanted, feed), strict=True):
                if real is not None and x.ndim >= 3 and x.shape[:2] == real.shape:
                    x = x[real]
                rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
                ratios[name].append(float(x.max() - x.min()) / rms if rms > 0 else 0.0)
    return {n.name: float(np.mean(ratios[n.input[0]])) if ratios[n.input[0]] else 0.0 for n in nodes}


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], fp32_matmuls: int | None = None) -> dict:
    """Write the int8 model of `src` to `dst`, keeping the `fp32_matmuls` weight MatMuls with the most outlying
    inputs in fp32 (None: `FP32_SHARE` of them); `feeds` are calibration batches (graph inputs) that only rank
    them. Returns what was done, for the manifest."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    nodes = weight_matmuls(model)
    keep_count = min(fp32_matmuls, len(nodes)) if fp32_matmuls is not None else int(round(len(nodes) * FP32_SHARE))
    scores = outlier_scores(model, feeds, nodes) if keep_count and feeds else {}
    kept = sorted(scores, key=lambda name: -scores[name])[:keep_count]
    embeddings = embedding_gathers(model)
    chosen = [n.name for n in nodes if n.name not in kept] + embeddings
    large = model.ByteSize() > 1_500_000_000
    del model
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     nodes_to_quantize=chosen, use_external_data_format=large)
    return {"scheme": "onnxruntime dynamic: int8 weights per output channel (7-bit), activations uint8 per tensor",
            "weight_matmuls": len(nodes), "int8_matmuls": len(nodes) - len(kept), "int8_embeddings": len(embeddings),
            "fp32_matmuls": [{"node": name, "input_range_over_rms": round(scores[name], 1)} for name in kept]}
