#!/usr/bin/env python3
"""How many MatMuls of an int8 export to keep in fp32 (`textxfer export --quantize int8 --fp32-matmuls N`): for
each N, the int8 export's agreement with the PyTorch run on SST-2 dev and its prediction time against the PyTorch
predictor's, side by side in one process, both fp32-input predictors at their defaults.

    .venv/bin/python scripts/experiments/int8_fp32_matmuls.py --run RUN_DIR --counts 0,1,2,3 \
        --out docs/results/int8-fp32-matmuls.txt

RUN_DIR: a run trained as `../shared/acceptance/IV-deploy` trains it (recipes/sst2.yaml, 1,000 training examples,
1 epoch, freeze 4). Times: the best of 3 passes over the 872 dev sentences, after one warm-up pass; each export is
timed in a process of its own where torch cannot be imported (as the acceptance check times it: torch's threads
in the same process slow onnxruntime), the PyTorch predictor in this one. Time one job at a time on the machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best_of(predict, texts: list[str], repeats: int = 3) -> tuple[list[str], float]:
    labels = [r[0]["label"] for r in predict(texts)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predict(texts)
        best = min(best, time.perf_counter() - started)
    return labels, best


def timed_without_torch(folder: Path, texts: list[str], tmp: Path) -> tuple[list[str], float]:
    """(labels, best seconds) of the export in `folder`, predicted in a fresh process without torch."""
    import json
    import subprocess
    import sys

    (tmp / "texts.json").write_text(json.dumps(texts))
    code = (f"import json, sys; sys.modules['torch'] = None; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from int8_fp32_matmuls import best_of\nfrom textxfer.deploy.text import OnnxTextClassifier\n"
            f"texts = json.load(open({str(tmp / 'texts.json')!r}))\n"
            f"print(json.dumps(best_of(OnnxTextClassifier({str(folder)!r}).predict, texts)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    labels, seconds = json.loads(done.stdout.strip().splitlines()[-1])
    return labels, seconds


def main() -> None:
    import textxfer
    from textxfer.outputs.onnx_export import export_run

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--counts", default="0,1,2,3")
    p.add_argument("--out", type=Path, default=None, help="append the table here")
    a = p.parse_args()
    data = Path(os.environ.get("TEXTXFER_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    with open(data / "sst2" / "dev.tsv", encoding="utf-8") as f:
        texts = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    reference, torch_seconds = best_of(textxfer.load(a.run).predict, texts)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [f"int8 export against the PyTorch predictor on SST-2 dev ({len(texts)} sentences), run {a.run}, "
             f"{os.cpu_count()} CPUs ({cpu}), {time.strftime('%Y-%m-%d')}",
             f"PyTorch predictor: {torch_seconds:.3f} s",
             "fp32 MatMuls | int8 s | throughput vs PyTorch | agreement with PyTorch | agreement with fp32 (export's check)"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, a.counts.split(",")):
            out = Path(tmp) / f"int8-{n}"
            manifest = export_run(a.run, out, quantize="int8", fp32_matmuls=n).manifest
            labels, seconds = timed_without_torch(out, texts, Path(tmp))
            agree = sum(x == y for x, y in zip(labels, reference, strict=True)) / len(texts)
            row = (f"{n} | {seconds:.3f} | {torch_seconds / seconds:.2f}x | {agree:.4f} | "
                   f"{manifest.checks['int8']['agreement_with_fp32']:.4f}")
            lines.append(row)
            print(row, flush=True)
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
