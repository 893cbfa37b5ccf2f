#!/usr/bin/env python
"""textxfer's batched predictor against `transformers.pipeline("text-classification")`, same model, same texts.

    python scripts/bench_predict.py               # 5,000 SST-2 sentences, median of 3 runs
    python scripts/bench_predict.py --quick       # 1,000 sentences, one run

The model is MiniLM-L6 with a (seeded, untrained) two-label classification head saved to a temporary folder:
prediction cost does not depend on what the weights learnt. Timed: the prediction call only (both models are
loaded and warmed up on 64 other sentences first); tokenisation is inside the call for both. The pipeline runs
twice: with its defaults (one text per forward pass) and with `batch_size=64` (its best here). Both systems must
give the same label for every sentence: the script checks it.
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
from bench_train import DATA, MODEL, read_tsv  # noqa: E402


def save_model(folder: Path, seed: int) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from textxfer.backbones import resolve_model_name

    path = resolve_model_name(MODEL)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,000 sentences, one run")
    p.add_argument("--sentences", type=int, help="how many SST-2 sentences (default 5000; 1000 with --quick)")
    p.add_argument("--repeats", type=int, help="runs per system, medians reported (default 3; 1 with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of textxfer and the batched pipeline")
    p.add_argument("--seed", type=int, default=42)
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
        systems = {
            "textxfer": lambda xs: clf.predict(xs, batch_size=a.batch_size),
            "pipeline": lambda xs: pipe(xs, truncation=True),
            "pipeline-batched": lambda xs: pipe(xs, truncation=True, batch_size=a.batch_size),
        }
        seconds: dict[str, list[float]] = {k: [] for k in systems}
        labels: dict[str, list[str]] = {}
        for fn in systems.values():
            fn(warm)
        print(f"bench_predict: MiniLM-L6 ({MODEL}), {n} SST-2 sentences (seed {a.seed}), batch {a.batch_size}, "
              f"{torch.get_num_threads()} torch threads, {repeats} run(s) each; load {os.getloadavg()[0]:.2f}",
              flush=True)
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
              f"{med['pipeline'] / med['textxfer']:.2f}x vs pipeline defaults | seconds "
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
