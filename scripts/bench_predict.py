#!/usr/bin/env python
"""textxfer's batched predictor against `transformers.pipeline("text-classification")`, same model, same texts.

    python scripts/bench_predict.py               # 5,000 SST-2 sentences, median of 3 runs
    python scripts/bench_predict.py --quick       # 1,000 sentences, one run

The model is MiniLM-L6 with a (seeded, untrained) two-label classification head saved to a temporary folder:
prediction cost does not depend on what the weights learnt. Timed: the prediction call only (both models are
loaded and warmed up on 64 other sentences first); tokenisation is inside the call for both. The pipeline runs
twice: with its defaults (one text per forward pass) and with `batch_size=64` (its best here). Both systems must
give the same label for every sentence: the script checks it.

Precision: every system predicts in the one textxfer's predictor computes in, measured (the dtype its first Linear
layer outputs on the warm-up sentences): `textxfer.load(...).predict` runs the saved model as stored, in fp32, with
no autocast and no precision setting. The pipeline rows run at the same precision (under
`torch.autocast("cpu", dtype=torch.bfloat16)` when it is bf16), measured the same way; the row prints each system's
(`precision fp32 / fp32 / fp32`). `--precision {auto,bf16,no}` asks for one explicitly (`auto`: what textxfer's
`training.mixed_precision: auto` resolves to here); the script refuses a precision textxfer's predictor does not
compute in, rather than compare unlike precisions.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402
    DATA,
    MODEL,
    PRECISIONS,
    compute_precision,
    precision_context,
    precision_name,
    read_tsv,
    resolve_precision,
)


def save_model(folder: Path, seed: int) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from textxfer.backbones.load import resolve_model_name

    path = resolve_model_name(MODEL)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)


def pipeline_call(pipe, precision: str, **kwargs):
    """`pipe(texts, **kwargs)` at `precision` (`bf16` or `no`): under bf16 autocast, or as it is."""
    def call(texts):
        with precision_context(precision):
            return pipe(texts, **kwargs)
    return call


def choose_precision(asked: str | None, textxfer_computes: str) -> str:
    """The precision of every system (`bf16` or `no`): what textxfer's predictor computes in (`fp32` or `bf16`,
    measured), or `asked` (`auto`, `bf16`, `no`) when it is the same; anything else is refused."""
    by_name = {precision_name(p): p for p in ("bf16", "no")}
    if textxfer_computes not in by_name:
        raise SystemExit(f"textxfer's predictor computes in {textxfer_computes}: the benchmark compares bf16 or fp32")
    ours = by_name[textxfer_computes]
    if asked is None:
        return ours
    wanted = resolve_precision(asked)
    if wanted != ours:
        raise SystemExit(f"--precision {asked} means {precision_name(wanted)} here, but textxfer's predictor "
                         f"(textxfer.load(...).predict) computes in {textxfer_computes} and has no precision setting: "
                         f"the pipeline rows would not be comparable. Run without --precision to compare at "
                         f"{textxfer_computes}.")
    return wanted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 sentences, one run")
    p.add_argument("--sentences", type=int, help="how many SST-2 sentences (default 5000; 1000 with --quick)")
    p.add_argument("--repeats", type=int, help="runs per system, medians reported (default 3; 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of textxfer and the batched pipeline")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the precision of every system (default: the one textxfer's predictor computes in, fp32); "
                        "refused when textxfer's predictor does not compute in it")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n = a.sentences or (1000 if a.quick else 5000)
    repeats = a.repeats or (1 if a.quick else 3)

    import numpy as np
    import torch
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    import textxfer

    hf_logging.set_verbosity_error()
    rows = random.Random(a.seed).sample(read_tsv(DATA / "train.tsv"), n + 64)
    texts, warm = [r[0] for r in rows[:n]], [r[0] for r in rows[n:]]
    with tempfile.TemporaryDirectory(prefix="textxfer-bench-predict-") as tmp:
        save_model(Path(tmp), a.seed)
        clf = textxfer.load(tmp)
        pipe = pipeline("text-classification", model=tmp, tokenizer=tmp, device=-1)
        textxfer_computes = compute_precision(clf.model, lambda: clf.predict(warm[:8], batch_size=a.batch_size))
        precision = choose_precision(a.precision, textxfer_computes)
        systems = {
            "textxfer": lambda xs: clf.predict(xs, batch_size=a.batch_size),
            "pipeline": pipeline_call(pipe, precision, truncation=True),
            "pipeline-batched": pipeline_call(pipe, precision, truncation=True, batch_size=a.batch_size),
        }
        seconds: dict[str, list[float]] = {k: [] for k in systems}
        labels: dict[str, list[str]] = {}
        computes: dict[str, str] = {}
        for name, fn in systems.items():  # the warm-up, and what each system computes in
            computes[name] = compute_precision(pipe.model if name != "textxfer" else clf.model,
                                               lambda fn=fn: fn(warm))
        if set(computes.values()) != {precision_name(precision)}:
            raise SystemExit(f"the systems compute in different precisions ({computes}), not "
                             f"{precision_name(precision)} each: not comparable, stopping")
        print(f"bench_predict: MiniLM-L6 ({MODEL}), {n} SST-2 sentences (seed {a.seed}), batch {a.batch_size}, "
              f"{torch.get_num_threads()} torch threads, {repeats} run(s) each; precision "
              f"{precision_name(precision)} for every system; load {os.getloadavg()[0]:.2f}", flush=True)
        for _ in range(repeats):
            for name, fn in systems.items():
                started = time.perf_counter()
                out = fn(texts)
                seconds[name].append(time.perf_counter() - started)
                labels[name] = [o[0]["label"] if isinstance(o, list) else o["label"] for o in out]
        med = {k: statistics.median(v) for k, v in seconds.items()}
        best = min(("pipeline", "pipeline-batched"), key=lambda k: med[k])
        agree = {k: float(np.mean([x == y for x, y in zip(labels["textxfer"], labels[k], strict=True)]))
                 for k in ("pipeline", "pipeline-batched")}
        print(f"predict {med[best] / med['textxfer']:.2f}x vs best pipeline ({best}) | "
              f"{med['pipeline'] / med['textxfer']:.2f}x vs pipeline defaults | precision "
              + " / ".join(computes[k] for k in systems) + " | seconds "
              + " / ".join(f"{med[k]:.2f}" for k in systems) + " | sentences/s "
              + " / ".join(f"{n / med[k]:.0f}" for k in systems)
              + f" | same label {100 * min(agree.values()):.2f}%  [{' / '.join(systems)}]; load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        if min(agree.values()) < 0.999:
            print("WARNING: textxfer and the pipeline disagree on some labels", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
