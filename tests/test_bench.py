"""The benchmark scripts' code paths on a tiny BERT: the Trainer side trains exactly what textxfer trains, each
system's worker runs and reports, and the strategy rows parse the way the acceptance check reads them.

Precision: the exact numbers checked here (ratios of fixed times, FLOP counts, scores of given probabilities) are
float64 arithmetic on fixed inputs; no model output is compared, so neither precision enters."""

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


def _args(bench, model: Path, strategy: str, work: Path, data: Path, system: str,
          precision: str = "no") -> argparse.Namespace:
    return argparse.Namespace(worker=system, strategy=strategy, model=str(model), train=str(data / "train.tsv"),
                              trainer_eval_batch=0, precision=precision,
                              dev_file=str(data / "dev.tsv"), epochs=1.0, seed=0, work=str(work))


def _fresh_accelerate_state() -> None:
    """Each benchmark worker runs in its own process; in this one, a Trainer after a run at another precision
    needs Accelerate's per-process state forgotten (as `textxfer.train` does for itself)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _ratio(row: str) -> float:
    """The first `<number>x` of a row: what the acceptance check reads as best-Trainer / textxfer time."""
    return float(re.findall(r"(\d+(?:\.\d+)?)\s*[x×]", row)[0])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_side_trains_the_same_parameters(bench, strategy, tiny_models, monkeypatch):
    """`same frozen params`: the Trainer's model trains exactly the parameters textxfer's strategy trains."""
    from transformers import AutoModelForSequenceClassification

    from textxfer.backbones.load import load_classifier
    from textxfer.config.schema import StrategyConfig
    from textxfer.strategies.apply import apply_strategy

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
    """Both workers train in bf16 when told to (textxfer not left to resolve `auto`, the Trainer with bf16=True), say
    so, and the row shows each system's precision after the ratio the acceptance check reads."""
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEXTXFER_AUTO_PRECISION", "no")  # `auto` would mean fp32: bf16 must come from the argument
    runs = {}
    for system in ("textxfer", "trainer-grouped"):
        a = _args(bench, tiny_models["bert"], "head", tmp_path / system, sst2_like, system, precision="bf16")
        if system != "textxfer":
            _fresh_accelerate_state()
        out = bench.run_textxfer(a) if system == "textxfer" else bench.run_trainer(a, grouped=True)
        assert 0 < out["seconds"] <= out["total_seconds"]
        assert 0.0 <= out["accuracy"] <= 1.0 and out["evals"] == 1
        assert out["precision"] == "bf16", system
        out["peak_rss_mb"] = bench.peak_rss_mb()
        runs[("head", system)] = [out]
    assert runs[("head", "textxfer")][0]["trainable"] == runs[("head", "trainer-grouped")][0]["trainable"]
    # the textxfer worker put the library's methods back
    from textxfer.engine.loop import Loop
    from textxfer.modalities.text.modality import TextModality

    assert Loop.fit.__name__ == "fit" and TextModality.build_cache.__name__ == "build_cache"

    stats = bench.token_stats(str(tiny_models["bert"]), sst2_like / "train.tsv", sst2_like / "dev.tsv")
    assert stats["train"]["n"] == 40 and stats["train"]["tokens"] > 40
    # fixed times so the printed ratio is known: the row must give it first, as the acceptance check reads it
    runs[("head", "textxfer")][0]["seconds"] = 2.0
    runs[("head", "trainer-grouped")][0]["seconds"] = 17.0
    capsys.readouterr()
    bench.report_row("head", ["textxfer", "trainer-grouped"], runs, stats, 1.0, peak=100.0)
    row = capsys.readouterr().out.splitlines()[0].lower()
    assert re.match(r"\W*head\b", row)
    assert _ratio(row) == pytest.approx(8.5)
    assert "precision bf16 / bf16" in row


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_bench_train_gives_every_system_the_same_precision(bench, precision, tmp_path):
    """One precision, passed explicitly: textxfer's recipe carries it as `training.mixed_precision` (valid, not
    `auto`), and the Trainer's `TrainingArguments` turn bf16 autocast on exactly when it is bf16."""
    from transformers import TrainingArguments

    from textxfer.config.reading import load_recipe

    a = _args(bench, tmp_path / "model", "freeze", tmp_path, tmp_path, "textxfer", precision=precision)
    recipe = bench.textxfer_recipe(a)
    assert recipe["training"]["mixed_precision"] == precision
    assert load_recipe(data=recipe).training.mixed_precision == precision
    for grouped in (False, True):
        kwargs = bench.trainer_arguments(a, grouped)
        assert kwargs["bf16"] is (precision == "bf16") and not kwargs["fp16"] and not kwargs["bf16_full_eval"]
        args = TrainingArguments(**kwargs)
        assert args.mixed_precision == precision  # what the Trainer hands its Accelerator
        assert args.use_cpu and args.learning_rate == bench.LEARNING_RATES["freeze"]
    with pytest.raises(ValueError, match="unresolved"):
        bench.trainer_arguments(_args(bench, tmp_path, "head", tmp_path, tmp_path, "trainer", precision="auto"), False)


def test_bench_precision_auto_is_what_textxfer_resolves(bench, monkeypatch):
    from textxfer.core.precision import effective_mixed_precision

    assert bench.resolve_precision("auto") == effective_mixed_precision("auto")
    for forced in ("bf16", "no"):
        monkeypatch.setenv("TEXTXFER_AUTO_PRECISION", forced)
        assert bench.resolve_precision("auto") == forced
        assert bench.resolve_precision("bf16") == "bf16" and bench.resolve_precision("no") == "no"
    assert bench.precision_name("no") == "fp32" and bench.precision_name("bf16") == "bf16"


def test_bench_train_refuses_a_system_that_ran_in_another_precision(bench):
    bench.check_precision("trainer", "head", "bf16", "bf16")
    bench.check_precision("trainer", "head", "no", "fp32")
    with pytest.raises(SystemExit, match=r"trainer / head computed in fp32, not bf16.*unlike precisions"):
        bench.check_precision("trainer", "head", "bf16", "fp32")
    with pytest.raises(SystemExit, match="not fp32"):
        bench.check_precision("textxfer", "full", "no", "bf16 asked, autocast not applied")


def test_bench_train_row_shows_each_systems_precision_after_the_ratio(bench, capsys):
    stats = {"train": {"n": 10, "tokens": 50, "squares": 300}, "dev": {"n": 4, "tokens": 20, "squares": 100},
             "sizes": {"hidden": 8, "layers": 1, "ffn": 16}}
    systems = ["textxfer", "trainer", "trainer-grouped"]
    runs = {("full", y): [{"seconds": s, "total_seconds": s + 1, "accuracy": 0.5, "peak_rss_mb": 100.0,
                           "trainable": 10, "evals": 1, "precision": "bf16"}]
            for y, s in zip(systems, (2.0, 9.0, 5.0), strict=True)}
    bench.report_row("full", systems, runs, stats, 1.0, peak=100.0)
    out = capsys.readouterr().out
    row = out.splitlines()[0]
    assert row.startswith("full ") and _ratio(row) == pytest.approx(2.5)
    assert "precision bf16 / bf16 / bf16" in row and "WARNING" not in out
    assert "% of the bf16 matmul peak" in out
    runs[("full", "trainer")][0]["precision"] = "fp32"
    bench.report_row("full", systems, runs, stats, 1.0, peak=100.0)
    out = capsys.readouterr().out
    assert "precision bf16 / fp32 / bf16" in out and "different precisions" in out


def test_bench_predict_matches_textxfers_predictor_precision(tmp_path, monkeypatch):
    """textxfer's predictor computes in fp32 (measured), the pipeline rows follow it, bf16 is autocast for the
    pipeline and is refused while textxfer's predictor cannot compute in it."""
    from conftest import make_tiny_checkpoint
    from transformers import pipeline

    import textxfer

    predict = load_script("bench_predict")
    folder = make_tiny_checkpoint("bert", tmp_path / "clf", with_head=True)
    clf = textxfer.load(folder)
    texts = ["good film", "a bad movie was sad"]
    assert predict.compute_precision(clf.model, lambda: clf.predict(texts)) == "fp32"
    pipe = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device=-1)
    for precision, name in (("bf16", "bf16"), ("no", "fp32")):
        call = predict.pipeline_call(pipe, precision, truncation=True, batch_size=2)
        assert predict.compute_precision(pipe.model, lambda call=call: call(texts)) == name
        assert len(call(texts)) == 2

    assert predict.choose_precision(None, "fp32") == "no"
    assert predict.choose_precision("no", "fp32") == "no"
    assert predict.choose_precision(None, "bf16") == "bf16"
    with pytest.raises(SystemExit, match=r"computes in fp32 and has no precision setting"):
        predict.choose_precision("bf16", "fp32")
    monkeypatch.setenv("TEXTXFER_AUTO_PRECISION", "bf16")
    with pytest.raises(SystemExit, match=r"--precision auto means bf16"):
        predict.choose_precision("auto", "fp32")


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
    name = bench.precision_name(bench.resolve_precision("auto"))  # the default: what textxfer's auto means here
    for line in rows.values():
        assert re.findall(r"(\d+(?:\.\d+)?)\s*[x×]", line)
        assert f"precision {name} / {name} / {name}" in line
    assert f"precision: {name}" in out
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


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_bench_accuracy_gives_every_system_the_same_precision(precision, tmp_path, tiny_models):
    """textxfer gets the precision as `training.mixed_precision` (after which only `--set` comes), the Trainer as
    `bf16=`; the Trainer worker trains in it and scores with Accelerate's autocast wrapper removed, in fp32 as
    textxfer's predictor does."""
    import json

    from transformers import TrainingArguments

    accuracy = load_script("bench_accuracy")
    labels = ["negative", "positive"]
    for split, n in (("train", 12), ("eval", 6)):
        rows = ["text,label"] + [f"{'a good film' if i % 2 else 'a bad movie'} {i},{labels[i % 2]}" for i in range(n)]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    a = argparse.Namespace(train=str(tmp_path / "train.csv"), eval=str(tmp_path / "eval.csv"),
                           labels=json.dumps(labels), model=str(tiny_models["bert"]), run_dir=str(tmp_path / "run"),
                           seed=0, multi_label=False, set=["training.epochs=1"], precision=precision,
                           predict_precision=accuracy.PREDICT_PRECISION)
    overrides = accuracy.textxfer_overrides(a)
    assert f"training.mixed_precision={precision}" in overrides and overrides[-1] == "training.epochs=1"
    kwargs = accuracy.trainer_arguments(a, gpu=False)
    assert kwargs["bf16"] is (precision == "bf16") and TrainingArguments(**kwargs).mixed_precision == precision

    _fresh_accelerate_state()
    res = accuracy.work_trainer(a)
    assert res["precision"] == accuracy.PRECISION_NAMES[precision]
    assert res["predict_precision"] == "fp32"  # textxfer's predictor computes in fp32: so does the Trainer's scoring
    assert accuracy.precision_mismatch(res, precision) == ""
    assert 0.0 <= res["accuracy"] <= 1.0


def test_bench_accuracy_refuses_and_prints_unlike_precisions():
    accuracy = load_script("bench_accuracy")
    res = {"row": "sst2-8", "seed": 0, "system": "setfit", "accuracy": 0.6, "train_seconds": 7.0,
           "cpu_seconds": 13.0, "other_load": 0.0, "precision": "fp32", "predict_precision": "fp32"}
    assert accuracy.precision_mismatch(res, "bf16") == "trained in fp32, not bf16"
    assert accuracy.precision_mismatch({**res, "predict_precision": "bf16"}, "no") == "predicted in bf16, not fp32"
    assert accuracy.precision_mismatch({"accuracy": 0.5}, "no").startswith("trained in None")
    table = accuracy.summarise([res, {**res, "system": "trainer"}], ["sst2-8"], ["setfit", "trainer"])
    assert table.count("fp32 train / fp32 predict") == 2 and "precision" in table.splitlines()[0]


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
