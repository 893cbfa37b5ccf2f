"""The bundled image recipes on real data and the real EfficientNet-Lite0 weights (slow: minutes on a CPU).

hymenoptera: >= 0.92 validation accuracy in under 5 minutes, and `pipeline("image-classification")` on the
saved model agrees with `textxfer predict`. digits: scikit-learn's digits, offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data"))
pytestmark = pytest.mark.slow


def textxfer(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textxfer", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TEXTXFER_DATA": str(DATA), **env})


@pytest.mark.skipif(not (DATA / "hymenoptera").is_dir(), reason="needs ../shared/data/hymenoptera")
def test_hymenoptera_recipe_accuracy_time_and_pipeline_agreement(tmp_path):
    """Precision: the machine's (`auto`) for training; `textxfer predict` and pipeline() both run the saved model
    in fp32, so their scores agree to fp32's summation order (rtol 1e-4) in both modes."""
    from transformers import pipeline

    out = tmp_path / "run"
    started = time.time()
    run = textxfer("train", "recipes/hymenoptera-efficientnet.yaml", "--output-dir", str(out))
    seconds = time.time() - started
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] >= 0.92, metrics["validation"]
    assert seconds < 300, f"took {seconds:.0f}s"
    log = (out / "train.log").read_text()
    assert "left out 1 file(s) (ants/imageNotFound.gif)" in log
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "image" and record["data"]["train"]["rows"] == 244

    images = sorted(str(p) for p in (DATA / "hymenoptera/val/bees").glob("*.jpg"))[:6] + \
        sorted(str(p) for p in (DATA / "hymenoptera/val/ants").glob("*.jpg"))[:6]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(images) + "\n")
    said = textxfer("predict", str(out), "--input", str(listing))
    assert said.returncode == 0, said.stderr[-2000:]
    rows = [json.loads(line) for line in said.stdout.splitlines()]
    pipe = pipeline("image-classification", model=str(out / "model"))
    plain = [p[0] for p in pipe(images, top_k=1)]
    assert [r["image"] for r in rows] == images
    assert [r["label"] for r in rows] == [p["label"] for p in plain]
    np.testing.assert_allclose([r["score"] for r in rows], [p["score"] for p in plain], rtol=1e-4, atol=1e-5)
    assert sum(r["label"] == ("bees" if "/bees/" in r["image"] else "ants") for r in rows) >= 10


def test_digits_recipe(tmp_path):
    out = tmp_path / "run"
    run = textxfer("train", "recipes/digits-efficientnet.yaml", "--output-dir", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    first = json.loads((out / "predictions/test.jsonl").read_text().splitlines()[0])
    assert first["image"].startswith("sklearn:digits#") and len(first["probs"]) == 10
