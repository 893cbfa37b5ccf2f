"""scripts/bench_predict.py runs end to end on tiny sizes (the timed runs are the lead's, on an idle machine)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import SHARED_DATA, load_script, make_tiny_checkpoint

from textxfer.outputs.onnx_export import export_run

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "sst2" / "train.tsv").is_file(),
                                reason="needs ../shared/data/sst2 (the benchmark's sentences)")


def test_scale_rows_report_peak_memory_and_rate_of_both_predictions(tmp_path):
    bench = load_script("bench_predict")
    export_run(make_tiny_checkpoint("bert", tmp_path / "m", with_head=True), tmp_path / "onnx")
    args = SimpleNamespace(scale_model=str(tmp_path / "onnx"), scale_rows=[30, 60], baseline_max_rows=30,
                           scale_repeats=2)
    rows = bench.scale(args, tmp_path)
    body = rows[1:-1]
    assert [(r["system"], r["rows"], r["run"]) for r in body] == [
        ("streaming", 30, 0), ("today", 30, 0), ("streaming", 30, 1), ("today", 30, 1), ("streaming", 60, 0)]
    assert all(r["peak_rss_mb"] > 10 and r["rows_per_s"] > 0 for r in body)
    assert set(rows[-1]) == {"rss_largest_over_smallest", "throughput_vs_today_30"}
    small = sorted(r["peak_rss_mb"] for r in body if r["system"] == "streaming" and r["rows"] == 30)
    assert rows[-1]["rss_largest_over_smallest"] == pytest.approx(body[-1]["peak_rss_mb"] / (sum(small) / 2))
    lines = bench.format_scale(rows)
    assert lines[2].startswith("streaming ") and "rss_largest_over_smallest" in lines[-1]


@pytest.mark.slow
def test_speed_rows_name_precision_size_and_agreement(tmp_path):
    bench = load_script("bench_predict")
    out = tmp_path / "res"
    assert bench.main(["--sentences", "24", "--repeats", "1", "--latency-texts", "3", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["system"] for r in rows[1:]] == ["textxfer (PyTorch)", "pipeline", "textxfer ONNX fp32",
                                               "textxfer ONNX int8"]
    assert [r["precision"] for r in rows[1:]] == ["fp32", "fp32", "fp32", "int8 weights, fp32 activations"]
    assert rows[4]["smaller_than_pytorch"] > 3 and rows[3]["same_label_as_pytorch"] == 1.0
    assert "sent/s b32" in out.with_suffix(".txt").read_text()
