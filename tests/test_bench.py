"""The benchmark scripts' code paths on a tiny BERT: the Trainer side trains exactly what textxfer trains, each
system's worker runs and reports, and the strategy rows parse the way the acceptance check reads them."""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import pytest
from conftest import WORDS, load_script

STRATEGIES = ("head", "freeze", "lora", "full")


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_train")


@pytest.fixture
def sst2_like(tmp_path) -> Path:
    """train.tsv / dev.tsv with SST-2's header (`sentence<TAB>label`), two learnable classes."""
    rng = random.Random(0)
    folder = tmp_path / "sst2"
    folder.mkdir()
    for split, n in (("train", 40), ("dev", 16)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            cue = rng.choice(["good", "great"] if i % 2 else ["bad", "awful"])
            lines.append(" ".join(rng.sample(WORDS[8:17], rng.randint(1, 5)) + [cue]) + f"\t{i % 2}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _args(bench, model: Path, strategy: str, work: Path, data: Path, system: str) -> argparse.Namespace:
    return argparse.Namespace(worker=system, strategy=strategy, model=str(model), train=str(data / "train.tsv"),
                              trainer_eval_batch=0,
                              dev_file=str(data / "dev.tsv"), epochs=1.0, seed=0, work=str(work))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_side_trains_the_same_parameters(bench, strategy, tiny_models, monkeypatch):
    """`same frozen params`: the Trainer's model trains exactly the parameters textxfer's strategy trains."""
    from transformers import AutoModelForSequenceClassification

    from textxfer.backbones import load_classifier
    from textxfer.recipe import StrategyConfig
    from textxfer.strategies import apply_strategy

    # the tiny model has 2 layers: freeze the lower one
    monkeypatch.setattr(bench, "FREEZE_LAYERS", 1)
    cfg = StrategyConfig(name=strategy, freeze_layers=1)
    cfg.lora.target_modules = list(bench.LORA["target_modules"])
    model, parts = load_classifier(str(tiny_models["bert"]), ["0", "1"])
    ours = apply_strategy(model, parts, cfg).model
    theirs = bench.trainable_for_trainer(
        AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2), strategy)

    def trained(m):
        return {n for n, p in m.named_parameters() if p.requires_grad}

    assert trained(ours) == trained(theirs)
    assert trained(ours), "something must train"


def test_workers_report_time_accuracy_and_the_row_parses(bench, tiny_models, sst2_like, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    runs = {}
    for system in ("textxfer", "trainer-grouped"):
        a = _args(bench, tiny_models["bert"], "head", tmp_path / system, sst2_like, system)
        out = bench.run_textxfer(a) if system == "textxfer" else bench.run_trainer(a, grouped=True)
        assert 0 < out["seconds"] <= out["total_seconds"]
        assert 0.0 <= out["accuracy"] <= 1.0 and out["evals"] == 1
        out["peak_rss_mb"] = bench.peak_rss_mb()
        runs[("head", system)] = [out]
    assert runs[("head", "textxfer")][0]["trainable"] == runs[("head", "trainer-grouped")][0]["trainable"]
    # the textxfer worker put the library's methods back
    from textxfer.training import Loop

    assert Loop.fit.__name__ == "fit" and Loop.build_cache.__name__ == "build_cache"

    stats = bench.token_stats(str(tiny_models["bert"]), sst2_like / "train.tsv", sst2_like / "dev.tsv")
    assert stats["train"]["n"] == 40 and stats["train"]["tokens"] > 40
    # fixed times so the printed ratio is known: the row must give it first, as the acceptance check reads it
    runs[("head", "textxfer")][0]["seconds"] = 2.0
    runs[("head", "trainer-grouped")][0]["seconds"] = 17.0
    capsys.readouterr()
    bench.report_row("head", ["textxfer", "trainer-grouped"], runs, stats, 1.0, peak=100.0)
    row = capsys.readouterr().out.splitlines()[0].lower()
    assert re.match(r"\W*head\b", row)
    assert float(re.findall(r"(\d+(?:\.\d+)?)\s*[x×]", row)[0]) == pytest.approx(8.5)


def test_useful_work_counts_real_tokens_only(bench):
    sizes = {"hidden": 384, "layers": 6, "ffn": 1536}
    one = bench.forward_flops({"tokens": 13, "squares": 169}, sizes)
    # 2 x 10.6M matmul parameters per token, plus attention on 13 real tokens
    assert one == pytest.approx(13 * 2 * 6 * (4 * 384 ** 2 + 2 * 384 * 1536) + 6 * 4 * 384 * 169)
    padded_away = bench.forward_flops({"tokens": 26, "squares": 338}, sizes)
    assert padded_away == pytest.approx(2 * one)


@pytest.mark.slow
def test_bench_train_main_end_to_end(bench, tiny_models, sst2_like, capsys):
    """Every system in its own process, the rows and the useful-work line of `full`."""
    assert bench.main(["--model", str(tiny_models["bert"]), "--data", str(sst2_like), "--examples", "24",
                       "--epochs", "1", "--strategies", "head,full", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.lower()
    rows = {s: line for line in out.splitlines() for s in ("head", "full") if re.match(rf"\W*{s}\b", line)}
    assert set(rows) == {"head", "full"}
    for line in rows.values():
        assert re.findall(r"(\d+(?:\.\d+)?)\s*[x×]", line)
    assert "useful work (textxfer)" in out


@pytest.mark.slow
def test_profile_cache_pass_lists_the_operators(capsys, monkeypatch):
    """Real MiniLM on the bench slice of SST-2: the head pass keeps position 0, cuts the last layer, and the
    profile names the matmuls."""
    profiler = load_script("profile_cache_pass")
    monkeypatch.setattr(sys, "argv", ["profile_cache_pass.py", "--rows", "3"])
    assert profiler.main() == 0
    out = capsys.readouterr().out
    assert "first_only True, last-layer cut True" in out
    assert "aten::addmm" in out


def test_bench_accuracy_flags_runs_that_shared_the_machine():
    """`other_load`: CPU time of other processes during a worker's run is counted, the worker's own is not, and a
    result measured beside another job is flagged in the printout and the summary."""
    import os
    import subprocess
    import time

    accuracy = load_script("bench_accuracy")
    if accuracy.OtherLoad.busy_seconds() is None:
        pytest.skip("no /proc/stat on this system")
    spin = [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"]
    alone = accuracy.OtherLoad()
    subprocess.run(spin, check=True)  # a worker: waited for, so its CPU time is its own
    quiet = alone.share()
    beside = accuracy.OtherLoad()
    other = subprocess.Popen(spin)  # another job: still running when the share is read
    time.sleep(1.0)
    loaded = beside.share()
    other.wait()
    assert loaded - quiet > 0.5 / (os.cpu_count() or 1)

    res = {"row": "sst2-8", "seed": 0, "system": "setfit", "accuracy": 0.6, "train_seconds": 7.0,
           "cpu_seconds": 13.0, "other_load": 0.4}
    assert "not comparable" in accuracy.busy_warning(res)
    assert accuracy.busy_warning({**res, "other_load": 0.0}) == ""
    assert "sst2-8 seed 0 setfit" in accuracy.summarise([res], ["sst2-8"], ["setfit"])


def test_bench_accuracy_refuses_to_run_beside_itself(tmp_path, capsys):
    """A second run while one holds the machine stops with the holder named (unless told to go on); once the first
    ends, the next one starts."""
    accuracy = load_script("bench_accuracy")
    lock = tmp_path / "bench.lock"
    first = accuracy.hold_machine(lock)
    with pytest.raises(SystemExit, match=r"another bench_accuracy.py is running .*pid \d+.*--allow-concurrent"):
        accuracy.hold_machine(lock)
    beside = accuracy.hold_machine(lock, allow_concurrent=True)
    assert "train times are not comparable" in capsys.readouterr().out
    beside.close()
    first.close()
    accuracy.hold_machine(lock).close()


def test_bench_accuracy_scores_multi_label_rows():
    """A multi-label row's cells (`a|b`) become multi-hot rows, and its scores are the usual micro/macro-F1 at the
    thresholds, exact-set accuracy and the mean binary log loss; the row is judged by micro-F1."""
    import numpy as np

    accuracy = load_script("bench_accuracy")
    labels = ["anger", "joy", "sadness"]
    hot = accuracy.label_matrix(["joy", "anger|sadness", ""], labels)
    assert hot.tolist() == [[0, 1, 0], [1, 0, 1], [0, 0, 0]]
    probs = np.array([[0.1, 0.9, 0.2], [0.7, 0.1, 0.4], [0.2, 0.3, 0.6]])
    s = accuracy.multilabel_scores(probs, hot)
    # predicted: {joy}, {anger}, {sadness}: tp 2 (joy, anger), fp 1 (row 3 sadness), fn 1 (row 2 sadness)
    assert s["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["accuracy"] == pytest.approx(1 / 3)
    bce = -np.mean(hot * np.log(probs) + (1 - hot) * np.log(1 - probs))
    assert s["log_loss"] == pytest.approx(bce)
    # per-label thresholds are applied per label
    assert accuracy.multilabel_scores(probs, hot, [0.5, 0.5, 0.35])["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert accuracy.headline("goemotions-16") == "micro_f1" and accuracy.headline("sst2-8") == "accuracy"
