"""End to end on tiny models: train -> run directory -> predict; pipeline agreement; LoRA merge/adapter; cache."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_recipe, write_tiny_dataset

import textxfer
from textxfer.config.reading import load_recipe
from textxfer.engine.loop import Loop


def test_train_writes_a_run_that_transformers_loads(tiny_models, tiny_data, tmp_path):
    """Precision: the suite's (`auto`) for training; every check is exact in both modes: metrics.json's best and
    history.json's evaluations are the same training-time figures, and pipeline() and textxfer.load() both run the
    saved model in fp32 (scores to 1e-5: the same forward, batched differently)."""
    from transformers import pipeline

    out = tmp_path / "run"
    data = write_tiny_dataset(tmp_path / "data96", n=96)
    result = textxfer.train(tiny_recipe(tiny_models["bert"], data, out, training__epochs=6,
                                        training__learning_rate=5e-3))
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "recipe.yaml",
                 "metrics.json", "run.json", "history.json", "train.log", "predictions/validation.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["accuracy"] == max(e["accuracy"] for e in json.loads(
        (out / "history.json").read_text())["eval"])
    assert "macro_f1" in metrics["validation"] and set(metrics["per_class"]["validation"]) == {"neg", "pos", "sport"}
    config = json.loads((out / "model/config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos", "2": "sport"}
    assert result.metrics["validation"]["accuracy"] > 0.5  # learnable words: well above chance (1/3)

    texts = ["the film was good", "a very awful plot", "goal", "the ball is happy"]
    plain = pipeline("text-classification", model=str(out / "model"))
    ours = textxfer.load(out).predict(texts)
    assert [p["label"] for p in plain(texts)] == [r[0]["label"] for r in ours]
    np.testing.assert_allclose([p["score"] for p in plain(texts)], [r[0]["score"] for r in ours], atol=1e-5)


def test_metrics_json_leads_with_the_test_score(tiny_models, tiny_data, tmp_path):
    """A reader (or a script) taking the first `accuracy` in metrics.json gets the held-out test figure.

    Precision: the suite's; the two figures are equal in both modes: the final evaluation (fp32 whatever the
    training precision, Loop.finish) scores the same rows with the same model."""
    out = tmp_path / "run"
    textxfer.train(tiny_recipe(tiny_models["bert"], tiny_data, out, data__test=str(tiny_data["validation"]),
                               training__epochs=1))
    metrics = json.loads((out / "metrics.json").read_text())
    splits = [k for k in metrics if k in ("test", "validation", "best")]
    assert splits == ["test", "validation", "best"]
    assert metrics["test"]["accuracy"] == metrics["validation"]["accuracy"]  # the same rows, the same model


def test_seeded_runs_are_identical(tiny_models, tiny_data, tmp_path):
    """Precision: the suite's; bit-identical in both modes: the two runs compute the same ops in the same order, and
    bf16's rounding is as deterministic as fp32's."""
    a = textxfer.train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "a"))
    b = textxfer.train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "b"))
    assert a.metrics["validation"] == b.metrics["validation"]
    wa = (tmp_path / "a/model/model.safetensors").read_bytes()
    wb = (tmp_path / "b/model/model.safetensors").read_bytes()
    assert wa == wb


@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
def test_lora_merged_equals_unmerged_and_adapter_reloads(arch, tiny_models, tiny_data, tmp_path):
    """Precision: fp32 in both modes: the merged model (textxfer.load) and the PEFT adapter load in fp32, and the
    run's saved predictions come from its final fp32 evaluation. 1e-4 covers merging B @ A into the weights, which
    changes fp32's rounding only (measured ~1e-7 relative)."""
    from peft import AutoPeftModelForSequenceClassification

    out = tmp_path / "run"
    recipe = tiny_recipe(tiny_models[arch], tiny_data, out, strategy__name="lora", save_adapter=True,
                         training__epochs=3)
    recipe["training"]["learning_rate"] = 5e-3
    textxfer.train(recipe)
    labels = json.loads((out / "adapter/textxfer_labels.json").read_text())
    assert labels["labels"] == ["neg", "pos", "sport"]
    texts = ["the film was good", "a very awful plot", "goal ball"]
    merged = textxfer.load(out)
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        out / "adapter", id2label=dict(enumerate(labels["labels"])), label2id=labels["label2id"]).eval()
    enc = merged.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        unmerged_logits = peft_model(**{k: v for k, v in enc.items() if k in merged.input_names}).logits.numpy()
    np.testing.assert_allclose(merged.logits(texts), unmerged_logits, atol=1e-4)
    assert peft_model.config.id2label[0] == "neg"
    # the trained head was saved with the adapter, not re-initialised: predictions match the run's own
    run_preds = [json.loads(line)["pred"] for line in (out / "predictions/validation.jsonl").read_text().splitlines()]
    val_texts = [json.loads(line)["text"] for line in (out / "predictions/validation.jsonl").read_text().splitlines()]
    assert [merged.labels[i] for i in merged.logits(val_texts).argmax(-1)] == run_preds


@pytest.mark.parametrize("strategy,layers,arch,pooling", [
    ("head", 0, "bert", "cls"), ("freeze", 1, "bert", "cls"), ("head", 0, "bert", "mean"),
    ("head", 0, "distilbert", "cls"), ("head", 0, "roberta", "cls"), ("head", 0, "electra", "cls"),
    ("head", 0, "deberta-v2", "cls"), ("freeze", 1, "deberta-v2", "cls")])
def test_cache_gives_the_same_logits_and_weights(strategy, layers, arch, pooling, tiny_models, tiny_data, tmp_path):
    """Frozen-prefix cache on vs off: same trained weights and logits within 1e-5 (dropout off in frozen parts,
    and here off everywhere so the two runs consume the same random numbers). With the whole body frozen
    (strategy head) only position 0 is kept, and with mean pooling it is the pooling layer's output.

    Precision: the suite's; exact in both modes (measured 0 difference under bf16 as under fp32): with and without
    the cache the frozen prefix runs the same ops in the same order under the same autocast, so bf16 rounds both
    alike. The 1e-5 of fp32 holds for both."""
    results = {}
    for cache in ("memory", "off"):
        recipe = load_recipe(data=tiny_recipe(
            tiny_models[arch], tiny_data, tmp_path / cache, strategy__name=strategy, model__pooling=pooling,
            strategy__freeze_layers=layers, training__cache=cache, model__dropout=0.0, training__epochs=2))
        loop = Loop(recipe, tmp_path / cache)
        loop.build()
        assert (loop.cache is not None) == (cache == "memory")
        if loop.cache is not None:
            assert loop.cache.first_only == (strategy == "head")
            # the last layer's feed-forward on position 0 alone; DistilBERT adds the residual outside its
            # attention block, so the cut would not shorten it and is refused
            assert loop.cache.cut_last == (strategy == "head" and arch != "distilbert")
            assert all(f.shape[0] == 1 for f in loop.features["train"]) == (strategy == "head")
        loop.prepare()
        loop.fit()
        logits, _, _ = loop.predict_split("validation")
        if loop.cache is not None:
            loop.cache.uninstall()
        state = {n: p.detach().clone() for n, p in loop.acc.unwrap_model(loop.model).named_parameters()}
        results[cache] = (logits, state)
    np.testing.assert_allclose(results["memory"][0], results["off"][0], atol=1e-5)
    for n, p in results["off"][1].items():
        torch.testing.assert_close(results["memory"][1][n], p, atol=1e-5, rtol=0)


def test_mean_pooling_layer_has_no_dropout_so_cache_on_and_off_agree(tiny_models, tiny_data, tmp_path):
    """The fixed pooling layer never trains, so it runs in eval mode like every frozen part: with dropout on in the
    head, a cached and an uncached run still train the same classifier.

    Precision: the suite's; exact in both modes (measured 0 under bf16), for the reason given in
    test_cache_gives_the_same_logits_and_weights; 1e-5 for both."""
    weights = {}
    for cache in ("memory", "off"):
        out = tmp_path / cache
        textxfer.train(tiny_recipe(tiny_models["bert"], tiny_data, out, strategy__name="head", model__pooling="mean",
                                   model__dropout=0.1, training__cache=cache, training__epochs=2))
        from safetensors.torch import load_file

        weights[cache] = load_file(out / "model/model.safetensors")
    for name, t in weights["off"].items():
        torch.testing.assert_close(weights["memory"][name], t, atol=1e-5, rtol=0)


def test_cache_keeps_the_whole_sequence_for_a_head_that_reads_it(tiny_models, tiny_data, tmp_path):
    """Keeping position 0 alone is tried, not assumed: a head that averages every position gets the whole sequence."""
    from textxfer.backbones.prefix_cache import FrozenPrefixCache
    from textxfer.modalities.text.batching import probe_batch

    class MeanPooler(torch.nn.Module):
        def forward(self, hidden):
            return hidden.mean(1)

    recipe = load_recipe(data=tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", strategy__name="head"))
    loop = Loop(recipe, tmp_path / "run")
    loop.build()
    assert loop.cache.first_only
    loop.cache.uninstall()
    loop.model.bert.pooler = MeanPooler()
    cache = FrozenPrefixCache(loop.model, loop.parts, len(loop.parts.layers))
    cache.prepare(probe_batch(loop.encoded["train"], loop.tokenizer.pad_token_id, loop.input_names),
                  loop.acc.device)  # where build put the model (a GPU where there is one)
    assert not cache.first_only


def test_cache_on_disk_is_keyed_and_reused(tiny_models, tiny_data, tmp_path, monkeypatch):
    """Precision: the suite's; the accuracies are equal in both modes: the rebuilt cache holds the features the
    first run computed (same ops, same autocast), and both figures come from the final fp32 evaluation."""
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "a", strategy__name="head", training__cache="auto")
    textxfer.train(recipe)
    files = sorted((tmp_path / "cache/features").glob("*.safetensors"))
    assert len(files) == 2  # train and validation
    # corrupt one: the next run detects it, rebuilds, never reuses it
    files[0].write_bytes(b"not a safetensors file")
    recipe["output_dir"] = str(tmp_path / "b")
    b = textxfer.train(recipe)
    assert "unreadable" in (tmp_path / "b/train.log").read_text()
    a_metrics = json.loads((tmp_path / "a/metrics.json").read_text())
    assert abs(a_metrics["validation"]["accuracy"] - b.metrics["validation"]["accuracy"]) < 1e-9


def test_full_disk_while_writing_the_cache_falls_back_to_memory(tiny_models, tiny_data, tmp_path, monkeypatch):
    import errno

    from textxfer.backbones import prefix_cache as features

    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))

    def full_disk(path, tensors):
        path.write_bytes(b"x" * 10)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features, "write_safetensors", full_disk)
    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "a", strategy__name="head", training__cache="auto")
    result = textxfer.train(recipe)
    assert "keeping it in memory only" in (tmp_path / "a/train.log").read_text()
    assert not list((tmp_path / "cache/features").iterdir())  # no partial file left behind
    assert result.metrics["validation"]["accuracy"] > 0 and (tmp_path / "a/model/model.safetensors").is_file()


def test_mapped_safetensors_round_trip(tmp_path):
    """Bit-exact storage round trip of fp32, bf16 and integer tensors; no computation, so no precision setting."""
    from textxfer.core.tensor_files import map_safetensors, write_safetensors

    tensors = {"w": torch.randn(3, 5), "h": torch.randn(7).to(torch.bfloat16), "i": torch.arange(4),
               "empty": torch.zeros(0)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    mapped = map_safetensors(tmp_path / "t.safetensors")
    for name, t in tensors.items():
        assert mapped[name].dtype == t.dtype and torch.equal(mapped[name], t)


# The best evaluation is scored at the training precision, the validation figures of metrics.json by the final
# evaluation in fp32 (Loop.finish). fp32: the same forward of the same (restored) weights, equal to the bit. bf16: the
# best's logits carry bf16's rounding (8 significant bits, a relative step of 2**-8 ~ 0.4%); this barely trained
# model's logits stay below 0.1 in size, so each moves by < 4e-4 and a cross-entropy by at most twice that: < 1e-3.
BEST_LOSS_TOLERANCE = {"no": 0.0, "bf16": 1e-3}


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_best_weights_stay_in_memory_when_the_run_directory_is_full(precision, tiny_models, tiny_data, tmp_path,
                                                                     monkeypatch):
    """The best weights, kept in memory when they cannot be written, are the ones restored and saved.

    Precision: pinned, each in turn: fp32 exact; bf16 to BEST_LOSS_TOLERANCE on the loss. The accuracy is equal
    under bf16 too because no validation row's two likeliest classes lie within bf16's rounding of each other (the
    closest are ~0.01 apart in probability; the two losses differ by ~3e-6)."""
    import errno

    from textxfer.core import tensor_files

    def full_disk(path, tensors):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensor_files, "write_safetensors", full_disk)  # best_weights imports it when it writes
    out = tmp_path / "run"
    result = textxfer.train(tiny_recipe(tiny_models["bert"], tiny_data, out, strategy__name="freeze",
                                        strategy__freeze_layers=1, training__cache="memory",
                                        training__mixed_precision=precision))
    assert "keeping them in memory" in (out / "train.log").read_text()
    best, final = result.metrics["best"], result.metrics["validation"]
    assert best["accuracy"] == final["accuracy"]
    assert final["loss"] == pytest.approx(best["loss"], abs=BEST_LOSS_TOLERANCE[precision], rel=0)
    assert not list(out.glob(".best-weights-*"))


def test_class_weights_balanced_are_inverse_frequency():
    """fp32 arithmetic on given counts (no model, no autocast): torch's default fp32 tolerance."""
    from textxfer.engine.batches import class_weight_tensor

    w = class_weight_tensor("balanced", ["a", "b"], np.array([0, 0, 0, 1]))
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))


def test_balanced_sampler_draws_classes_equally():
    from textxfer.modalities.text.batching import length_grouped_batches

    classes = np.array([0] * 90 + [1] * 10)
    lengths = np.arange(100) % 7 + 3
    drawn = [i for e in range(20) for b in length_grouped_batches(lengths, 10, 0, e, classes=classes) for i in b]
    share = np.mean(classes[drawn] == 1)
    assert 0.4 < share < 0.6  # 10% of the data, drawn about half the time
    plain = [i for b in length_grouped_batches(lengths, 10, 0, 0) for i in b]
    assert sorted(plain) == list(range(100))  # without it: every example exactly once


def test_batch_arrays_are_the_batches_the_plan_iterates():
    """The training loop holds an epoch as index arrays (`BatchPlan.batch_arrays`): the same batches, in the same
    order, as iterating the plan (plain, class-balanced, ungrouped, evaluation order), one int64 array each."""
    from textxfer.modalities.text.batching import BatchPlan

    lengths = np.random.default_rng(0).integers(3, 40, size=203)
    classes = np.array([0] * 180 + [1] * 23)
    for kwargs in ({}, {"classes": classes}, {"group_by_length": False}, {"shuffle": False}):
        plan = BatchPlan(lengths, 16, seed=3, **kwargs)
        for epoch in (0, 1):
            plan.set_epoch(epoch)
            arrays = plan.batch_arrays()
            assert [a.tolist() for a in arrays] == [list(b) for b in plan], kwargs
            assert all(a.dtype == np.int64 for a in arrays)


def test_length_grouping_cuts_padding():
    from textxfer.modalities.text.batching import length_grouped_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=2000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches) / lengths.sum()

    grouped = length_grouped_batches(lengths, 32, 0, 0, group_by_length=True)
    random_ = length_grouped_batches(lengths, 32, 0, 0, group_by_length=False)
    assert padded(grouped) < 1.1 < padded(random_)


def test_multilabel_run_end_to_end(tiny_models, tmp_path):
    """Sigmoid/BCE, thresholds tuned on validation, saved in the config; predict returns every label above them;
    plain transformers sees a multi-label model.

    Precision: the suite's for training. The config's thresholds match metrics.json's to 1e-4 because metrics.json
    rounds them to 4 decimals, in both modes; the saved model's predictions equal the run's in both modes, as both
    are computed in fp32 (load() predicts in fp32; the run's predictions come from its final fp32 evaluation)."""
    from transformers import AutoConfig

    rows = ["text\tlabels"]
    words = {"pos": "good", "neg": "bad", "sport": "goal"}
    import itertools
    import random

    rng = random.Random(0)
    combos = [c for n in (1, 2) for c in itertools.combinations(words, n)]
    for i in range(120):
        combo = combos[i % len(combos)]
        text = " ".join(rng.sample(["the", "a", "film", "was"], 2) + [words[c] for c in combo])
        rows.append(f"{text}\t{','.join(combo)}")
    (tmp_path / "train.tsv").write_text("\n".join(rows[:91]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join([rows[0]] + rows[91:]) + "\n")
    recipe = tiny_recipe(tiny_models["bert"], {"train": tmp_path / "train.tsv", "validation": tmp_path / "dev.tsv"},
                         tmp_path / "run", training__epochs=8, training__learning_rate=5e-3, training__metric="micro_f1")
    recipe["data"].update({"multi_label": True, "label_column": "labels", "format": "tsv"})
    result = textxfer.train(recipe)
    m = result.metrics
    assert {"micro_f1", "macro_f1", "accuracy"} <= set(m["validation"]) and len(m["thresholds"]) == 3
    config = AutoConfig.from_pretrained(tmp_path / "run/model")
    assert config.problem_type == "multi_label_classification"
    assert config.textxfer_thresholds == pytest.approx(m["thresholds"], abs=1e-4)
    clf = textxfer.load(tmp_path / "run")
    preds = clf.predict(["the film was good goal", "a bad film"])
    assert all(isinstance(p, list) for p in preds)
    rows_out = [json.loads(x) for x in (tmp_path / "run/predictions/validation.jsonl").read_text().splitlines()]
    assert isinstance(rows_out[0]["label"], list) and isinstance(rows_out[0]["pred"], list)
    # the run's predictions are what the saved model predicts
    again = clf.predict([r["text"] for r in rows_out])
    assert [sorted(x["label"] for x in p) for p in again] == [sorted(r["pred"]) for r in rows_out]


@pytest.mark.parametrize("strategy", ["head", "freeze"])
def test_test_split_is_not_cached_and_scores_as_without_cache(strategy, tiny_models, tiny_data, tmp_path):
    """The test split is read once, after training: the whole model scores it (caching it would only move that
    pass inside the training clock), with the same result as a run without the cache.

    Precision: the suite's for training, fp32 for the test split (the final evaluation). Exact in both modes
    (measured 0 under bf16): the cached and uncached runs train the same weights (see
    test_cache_gives_the_same_logits_and_weights); the loss is held to fp32's 1e-5 in both."""
    metrics = {}
    for cache in ("memory", "off"):
        recipe = load_recipe(data=tiny_recipe(
            tiny_models["bert"], tiny_data, tmp_path / cache, data__test=str(tiny_data["validation"]),
            strategy__name=strategy, strategy__freeze_layers=1, training__cache=cache, model__dropout=0.0))
        loop = Loop(recipe, tmp_path / cache)
        loop.build()
        if cache == "memory":
            assert loop.cache is not None and set(loop.features) == {"train", "validation"}
        loop.prepare()
        loop.fit()
        metrics[cache], _ = loop.finish()
        assert loop.cache is None
    assert metrics["memory"]["test"]["accuracy"] == metrics["off"]["test"]["accuracy"]
    assert metrics["memory"]["test"]["loss"] == pytest.approx(metrics["off"]["test"]["loss"], abs=1e-5)


def test_linear_schedule_matches_transformers_and_survives_a_checkpoint():
    """Our schedule replaces transformers' get_linear_schedule_with_warmup (its import takes about 0.2 s): the
    same factors step by step, and its state loads with weights_only as checkpoints do. Python floats, no model:
    no precision setting enters."""
    import io

    from transformers import get_linear_schedule_with_warmup

    from textxfer.engine.optim import linear_schedule

    def lrs(make, steps=12):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = make(opt)
        out = []
        for _ in range(steps):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out, sched

    ours, sched = lrs(lambda o: linear_schedule(o, 3, 10))
    theirs, _ = lrs(lambda o: get_linear_schedule_with_warmup(o, 3, 10))
    assert ours == pytest.approx(theirs) and ours[0] == 0.0 and ours[3] == 0.5 and ours[10] == 0.0
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    fresh = linear_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5), 3, 10)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.last_epoch == 12 and fresh.get_last_lr()[0] == sched.get_last_lr()[0]


def test_freed_heap_memory_is_released_where_glibc_allows():
    """`release_unused_memory` reaches glibc's malloc_trim on glibc systems (what lets a run's resident memory
    fall back after reading a large split) and is a harmless call elsewhere."""
    import platform

    from textxfer.core.heap import _malloc_trim, release_unused_memory

    if platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
    blocks = [bytes(4096) for _ in range(20_000)]
    del blocks
    release_unused_memory()


def _rss_file_mb() -> float:
    for line in open("/proc/self/status", encoding="utf-8"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps are Linux's")
def test_pages_of_a_read_only_mapped_file_leave_the_process_and_read_back_unchanged(tmp_path):
    """`drop_resident_pages` takes a read-only mapped file's pages out of the process (RssFile falls) and the data
    read afterwards are the same; `read_only_file_mappings` finds no mapping to drop for memory that cannot be read
    back from a file: owned arrays and copy-on-write mappings (dropping their pages would zero them)."""
    from textxfer.core.heap import drop_resident_pages, read_only_file_mappings

    path = tmp_path / "ids.bin"
    data = np.arange(16 * 2**20, dtype=np.int32)  # 64 MB
    data.tofile(path)
    mapped = np.memmap(path, dtype=np.int32, mode="r")
    mappings = read_only_file_mappings([mapped[10:20], mapped[-5:]])
    assert len(mappings) == 1 and mappings[0][1] - mappings[0][0] >= data.nbytes
    assert int(mapped.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page read: resident
    before = _rss_file_mb()
    drop_resident_pages(mappings)
    assert before - _rss_file_mb() > 48
    assert np.array_equal(mapped[::4096], data[::4096])

    owned = data.copy()
    copy_on_write = np.memmap(path, dtype=np.int32, mode="c")
    copy_on_write[0] = -1
    for arrays in ([owned], [mapped, owned], [copy_on_write]):
        assert read_only_file_mappings(arrays) == []
    assert np.array_equal(owned, data) and copy_on_write[0] == -1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps are Linux's")
def test_token_ids_of_a_mapped_arrow_file_drop_their_pages_as_rows_are_read(tmp_path, monkeypatch):
    """Token ids viewed from a memory-mapped Arrow file know it and drop its pages every `RELEASE_EVERY` rows read,
    returning the same ids; ids built from lists, and pickled or copied ids, are never touched."""
    import copy
    import pickle

    import pyarrow as pa

    from textxfer.modalities.text import batching
    from textxfer.modalities.text.batching import TokenIds

    rows = [[101, *range(i % 7 + 1), 102] for i in range(3000)]
    path = tmp_path / "tokens.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("input_ids", pa.list_(pa.int32()))])) as w:
        for start in range(0, len(rows), 1000):
            w.write_table(pa.table({"input_ids": pa.array(rows[start:start + 1000], pa.list_(pa.int32()))}))
    table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    ids = TokenIds.from_arrow(table.column("input_ids"))
    assert len(ids.mappings) == 1 and TokenIds.from_lists(rows).mappings == []

    drops = []
    real = batching.drop_resident_pages
    monkeypatch.setattr(batching, "drop_resident_pages", lambda mappings: drops.append(mappings) or real(mappings))
    order = np.random.default_rng(0).permutation(len(rows))
    assert all(ids[int(i)].tolist() == rows[i] for i in order)
    assert drops == [ids.mappings] * (len(rows) // TokenIds.RELEASE_EVERY)
    for copied in (pickle.loads(pickle.dumps(ids)), copy.deepcopy(ids)):  # its own memory: nothing to drop
        assert copied.mappings == [] and all(copied[i].tolist() == rows[i] for i in range(0, len(rows), 97))
