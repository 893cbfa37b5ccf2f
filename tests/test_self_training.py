"""Self-training on `data.unlabelled`: what is removed before labelling (duplicates, leaks), the label-column
notice, the per-round record, that the test split decides nothing, and errors that name the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_recipe

from textxfer.core.errors import UserError
from textxfer.tools import class_mix
from textxfer.tools.pseudo_labels import quotas, select
from textxfer.tools.unlabelled_texts import clean_unlabelled


def write_unlabelled(path: Path, texts: list[str], labels: list[str] | None = None) -> Path:
    rows = ["text,label"] + [f"{t},{y}" for t, y in zip(texts, labels, strict=True)] if labels else \
        ["text"] + list(texts)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def csv_texts(path: Path) -> list[str]:
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


UNLABELLED = [f"really {w} {f}" for w in ("good", "great", "bad", "awful", "goal", "ball") for f in
              ("film", "the plot", "a movie", "very actor", "is fine", "was the film")]


def self_training_recipe(tiny_models, tiny_data, out: Path, unlabelled: Path, **over) -> dict:
    return tiny_recipe(tiny_models["bert"], tiny_data, out, data__unlabelled=str(unlabelled),
                       self_training__per_class=4, self_training__rounds=over.pop("rounds", 1), **over)


# ------------------------------------------------------------------------------------------ units

def test_clean_unlabelled_removes_repeats_empties_and_every_labelled_split():
    taken = {"train": {"a", "b"}, "validation": {"c"}, "test": {"d"}}
    pool = clean_unlabelled(["a", "x", " x ", "", None, "c", "d", "y", "b"], None, "u.csv", taken)
    assert pool.texts == ["x", "y"]
    assert pool.counts == {"rows_read": 9, "empty": 2, "repeated": 1, "in_train": 2, "in_validation": 1,
                           "in_test": 1, "kept": 2}
    assert "1 equal to a test text" in pool.notes[0] and "no leakage" in pool.notes[0]


def test_a_text_differing_from_a_test_text_only_in_case_or_spacing_is_removed():
    """An uncased tokenizer reads `GOOD  Film` as `good film`: pseudo-labelling it would leak the test text."""
    pool = clean_unlabelled(["GOOD  Film", "good film!", "Other text"], None, "u.csv", {"test": {"good film"}})
    assert pool.texts == ["good film!", "Other text"] and pool.counts["in_test"] == 1


def test_the_unlabelled_file_may_name_its_own_text_column(tmp_path):
    from textxfer.config.reading import load_recipe
    from textxfer.tools.unlabelled_texts import read_unlabelled

    path = tmp_path / "u.csv"
    path.write_text("review\ngood film\nbad film\n")
    cfg = load_recipe(data={"model": {"name": "x"}, "data": {"train": "t.csv", "unlabelled": str(path)}}).data
    with pytest.raises(UserError, match="set `data.unlabelled_text_column`"):
        read_unlabelled(str(path), cfg)
    cfg.unlabelled_text_column = "review"
    assert read_unlabelled(str(path), cfg)[0] == ["good film", "bad film"]


def test_clean_unlabelled_with_nothing_left_names_the_file():
    with pytest.raises(UserError, match=r"u\.csv .*no unlabelled text is left"):
        clean_unlabelled(["a", "a"], None, "u.csv", {"train": {"a"}})


def test_select_keeps_the_most_confident_per_class_and_records_thresholds():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95], [0.45, 0.55]])
    chosen = select(probs, ["neg", "pos"], per_class=2)
    assert chosen.index.tolist() == [0, 2, 3, 4]
    assert chosen.labels.tolist() == [0, 0, 1, 1]
    assert chosen.kept == {"neg": 2, "pos": 2}
    assert chosen.threshold == {"neg": pytest.approx(0.8), "pos": pytest.approx(0.7)}
    floor = select(probs, ["neg", "pos"], per_class=2, min_confidence=0.85)
    assert floor.index.tolist() == [0, 4] and floor.kept == {"neg": 1, "pos": 1}


def test_select_balance_lengths_spreads_each_class_over_length_quartiles():
    rng = np.random.default_rng(0)
    lengths = np.arange(400) % 40 + 1
    p = rng.uniform(0.5, 0.95, 400)
    p[lengths > 20] = 0.99  # the model is surest of long texts: unbalanced, it would keep only those
    probs = np.stack([p, 1 - p], 1)
    plain = select(probs, ["a", "b"], per_class=40)
    balanced = select(probs, ["a", "b"], per_class=40, lengths=lengths)
    assert lengths[plain.index[plain.labels == 0]].min() > 20
    assert np.bincount(np.searchsorted([10.5, 20.5, 30.5], lengths[balanced.index[balanced.labels == 0]]),
                       minlength=4).tolist() == [10, 10, 10, 10]


def test_quotas_share_the_total_in_the_mix_and_add_up():
    assert quotas(250, np.array([0.8764, 0.1236])) == [438, 62]
    assert quotas(250, np.array([0.1, 0.2, 0.3, 0.05, 0.05, 0.3])) == [150, 300, 450, 75, 75, 450]
    assert sum(quotas(7, np.array([1.0, 1.0, 1.0]))) == 21
    assert quotas(10, np.array([1.0, 0.0])) == [20, 0]


def test_select_takes_one_count_per_class():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95], [0.45, 0.55]])
    chosen = select(probs, ["ham", "spam"], per_class=[3, 1])
    assert chosen.kept == {"ham": 3, "spam": 1}
    assert chosen.index.tolist() == [0, 1, 2, 4]


def test_select_predicted_spread_keeps_a_long_class_long():
    lengths = np.arange(400) % 40 + 1
    long_class = lengths > 30  # class b: the longest quartile of texts, as spam is longer than ham
    p = np.where(long_class, 0.2, 0.8)
    p[np.arange(400) % 40 == 0] = 0.45  # 10 short texts unsurely predicted as b, of the 110 predicted as b
    probs = np.stack([p, 1 - p], 1)
    even = select(probs, ["a", "b"], per_class=40, lengths=lengths)
    spread = select(probs, ["a", "b"], per_class=40, lengths=lengths, spread="predicted")
    b_even = lengths[even.index[even.labels == 1]]
    assert len(b_even) == 20 and (b_even <= 10).sum() == 10  # even: a quarter of b's quota, every unsure short text
    b_spread = lengths[spread.index[spread.labels == 1]]
    assert len(b_spread) == 40 and (b_spread <= 10).sum() == 4  # predicted: 40 x 10 / 110 of them


def biased_logits(n: int = 600, k: int = 3, lean: float = 1.5, seed: int = 0) -> np.ndarray:
    """Logits of a model that leans to class 0: equal true classes, class 0's logit raised by `lean`."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % k
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), truth] += 2.0
    z[:, 0] += lean
    return z


def test_align_moves_a_biased_class_mix_to_the_target():
    probs = class_mix._softmax(biased_logits())
    target = np.full(3, 1 / 3)
    aligned = class_mix.align(probs, target)
    assert np.allclose(aligned.sum(1), 1)
    assert probs.mean(0)[0] > 0.5  # the lean
    assert np.abs(aligned.mean(0) - target).max() < 0.5 * np.abs(probs.mean(0) - target).max()  # one step
    # the argmax mix moves too: class 0 stops taking most texts
    assert class_mix.predicted_mix(aligned)[0] < class_mix.predicted_mix(probs)[0] - 0.1


@pytest.mark.parametrize("target", [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
def test_mix_offsets_make_the_predicted_mix_the_target(target):
    z = biased_logits()
    target = np.asarray(target)
    hard = class_mix.mix_offsets(z, target)
    assert abs(hard.mean()) < 1e-9
    assert np.abs(class_mix.predicted_mix(z + hard) - target).max() <= 0.01
    soft = class_mix.mix_offsets(z, target, hard=False)
    assert np.abs(class_mix._softmax(z + soft).mean(0) - target).max() < 1e-4
    assert np.abs(class_mix.predicted_mix(z) - target).max() > 0.1  # there was something to correct


def test_align_keeps_a_two_class_selection_and_fills_the_quota_of_a_rare_prediction():
    z = biased_logits(n=400, k=2, lean=1.0)
    probs = class_mix._softmax(z)
    aligned = class_mix.align(probs, np.array([0.5, 0.5]))
    plain, with_align = select(probs, ["a", "b"], 40), select(aligned, ["a", "b"], 40)
    assert plain.index.tolist() == with_align.index.tolist()  # two classes: the most confident stay so
    # three classes, a teacher that predicts class 2 for few texts: aligned, every class fills its quota
    z = biased_logits(n=300, k=3, lean=0.0)
    z[:, 2] -= 3.0
    probs = class_mix._softmax(z)
    per_class = 60
    plain = select(probs, ["a", "b", "c"], per_class)
    assert plain.kept["c"] < per_class
    aligned = select(class_mix.align(probs, np.full(3, 1 / 3)), ["a", "b", "c"], per_class)
    assert aligned.kept == {"a": per_class, "b": per_class, "c": per_class}


# ------------------------------------------------------------------------------------------ runs

def test_rounds_are_recorded_and_duplicates_of_labelled_texts_removed(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    train_texts, val_texts = csv_texts(tiny_data["train"]), csv_texts(tiny_data["validation"])
    rows = UNLABELLED + train_texts[:3] + val_texts[:2] + UNLABELLED[:4]
    unlabelled = write_unlabelled(tmp_path / "u.csv", rows)
    out = tmp_path / "run"
    result = train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, rounds=2,
                                        self_training__retrain="head"))
    history = json.loads((out / "history.json").read_text())["self_training"]
    counts = history["unlabelled_counts"]
    assert counts["repeated"] == len(rows) - len(set(rows))
    assert counts["in_train"] + counts["in_validation"] == len(set(train_texts[:3]) | set(val_texts[:2]))
    assert counts["kept"] == len(UNLABELLED)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert sum(r["per_class"].values()) == r["kept"] > 0
        assert set(r["per_class"]) == {"neg", "pos", "sport"} and max(r["per_class"].values()) <= 4
        assert r["scored"] == len(UNLABELLED) and r["training_examples"] == rounds[0]["training_examples"] + r["kept"]
    summary = json.loads((out / "metrics.json").read_text())["self_training"]
    assert [r["kept"] for r in summary["rounds"]] == [r["kept"] for r in rounds[1:]]
    assert result.metrics["self_training"] == summary
    run = json.loads((out / "run.json").read_text())
    assert run["train_seconds"] > run["last_round_seconds"] and run["self_training"]["rounds"] == 2
    assert sorted(p.name for p in (out / "self_training").iterdir()) == ["round-0.log", "round-1.log"]
    # retrain: head: the later rounds train the classifier alone, on round 0's saved model, for
    # about round 0's optimizer steps (same_steps: 2 epochs x labelled / (labelled + kept), at least 1)
    assert "strategy head" in (out / "self_training" / "round-1.log").read_text()
    assert "strategy full" in (out / "self_training" / "round-0.log").read_text()
    for r in rounds[1:]:
        assert r["trained"] == "head"
        assert r["epochs"] == max(1.0, round(2 * rounds[0]["training_examples"] / r["training_examples"], 2))
    assert not list(tmp_path.glob(".self-training-*"))  # the earlier rounds' folders are gone
    assert "unlabelled: " + str(unlabelled) in (out / "recipe.yaml").read_text()  # the user's recipe, not the rounds'
    assert "Self-training" in (out / "report.html").read_text()


def test_final_class_mix_shift_rewrites_model_metrics_and_predictions_that_agree(tiny_models, tiny_data, tmp_path):
    from textxfer.modalities.text.predict import Classifier
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    result = train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, data__test=str(tiny_data["validation"]),
                                        self_training__final_class_mix="labelled"))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    shift = rounds[-1]["class_mix_shift"]
    assert shift["target"] == "labelled" and shift["rescored"] == ["test", "validation"]
    assert set(rounds[-1]["teacher_mix"]) == {"neg", "pos", "sport"}
    target = np.asarray(list(shift["target_mix"].values()))
    after = np.asarray(list(shift["unlabelled_mix_after"].values()))
    assert np.abs(after - target).max() <= 1.5 / len(UNLABELLED) + 1e-9  # as near as whole texts allow
    # the saved model, the prediction files and metrics.json agree
    clf = Classifier(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert result.metrics["test"] == metrics["test"]
    assert metrics["self_training"]["rounds"][-1]["class_mix_shift"]["offsets"] == shift["offsets"]
    for split in ("test", "validation"):
        rows = [json.loads(line) for line in (out / "predictions" / f"{split}.jsonl").read_text().splitlines()]
        probs = clf.probabilities([r["text"] for r in rows])
        assert np.allclose(probs, [r["probs"] for r in rows], atol=1e-5)
        assert [r["pred"] for r in rows] == [clf.labels[i] for i in probs.argmax(1)]
        right = np.mean([r["pred"] == r["label"] for r in rows])
        assert metrics[split]["accuracy"] == pytest.approx(right)
        assert sum(v["support"] for v in metrics["per_class"][split].values()) == len(rows)
    assert rounds[-1]["validation"] == metrics["validation"]
    # the offsets are in the saved bias: the same run without the shift differs from it by exactly them
    plain = tmp_path / "plain"
    train(self_training_recipe(tiny_models, tiny_data, plain, unlabelled, data__test=str(tiny_data["validation"]),
                               self_training__final_class_mix="none"))
    texts = UNLABELLED[:8]
    assert np.allclose(clf.logits(texts) - Classifier(plain).logits(texts), shift["offsets"], atol=1e-4)


def test_final_class_mix_round0_targets_the_first_teachers_mix(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, rounds=2, self_training__retrain="head",
                               self_training__final_class_mix="round0", self_training__align_pseudo_labels=True))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    shift = rounds[-1]["class_mix_shift"]
    assert shift["target"] == "round0" and shift["target_mix"] == rounds[1]["teacher_mix"]
    assert "class_mix_shift" not in rounds[1]


def test_class_quota_round0_keeps_pseudo_labels_in_round_0s_predicted_mix(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, rounds=1, self_training__retrain="head",
                               self_training__class_quota="round0", self_training__balance_lengths=False))
    first = json.loads((out / "history.json").read_text())["self_training"]["rounds"][1]
    teacher = np.array(list(first["teacher_mix"].values()))
    wanted = dict(zip(first["teacher_mix"], quotas(4, teacher), strict=True))
    available = {k: round(v * first["scored"]) for k, v in first["teacher_mix"].items()}
    assert first["per_class"] == {k: min(wanted[k], available[k]) for k in wanted}


def test_retrain_all_the_default_trains_the_recipe_again_for_its_epochs(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, rounds=2, self_training__same_steps=False))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    assert [(r["trained"], r["epochs"]) for r in rounds[1:]] == [("all", 2), ("all", 2)]
    assert "strategy full" in (out / "self_training" / "round-1.log").read_text()


def test_rounds_scale_the_classifier_penalty_to_their_examples(tiny_models, tiny_data, tmp_path):
    """training.head_l2 is against the summed loss: a round on labelled + pseudo-labelled texts multiplies it by
    examples / labelled, so each example weighs as in round 0 (else the classifier grows sure of everything)."""
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, rounds=2, training__head_l2=2.0))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    labelled = rounds[0]["training_examples"]
    assert "training.head_l2 2:" in (out / "self_training" / "round-0.log").read_text()
    scaled = 2.0 * rounds[1]["training_examples"] / labelled
    assert rounds[1]["training_examples"] > labelled
    assert f"training.head_l2 {scaled:g}:" in (out / "self_training" / "round-1.log").read_text()
    assert "head_l2: 2.0" in (out / "recipe.yaml").read_text()  # the user's recipe keeps its value


@pytest.mark.parametrize("setting, round0", [("no", "no"), ("recipe", "bf16")])
def test_round_0_trains_in_fp32_unless_asked_and_the_later_rounds_as_the_recipe_says(tiny_models, tiny_data, tmp_path,
                                                                                   setting, round0):
    """Round 0's model teaches every later round: by default it trains in fp32 even where the recipe asks bf16."""
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, training__mixed_precision="bf16",
                               self_training__round0_mixed_precision=setting))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    assert [r["mixed_precision"] for r in rounds] == [round0, "bf16"]
    assert f"mixed precision: {round0}\n" in (out / "self_training" / "round-0.log").read_text()
    assert "mixed precision: bf16\n" in (out / "self_training" / "round-1.log").read_text()
    assert "mixed precision: bf16\n" in (out / "train.log").read_text()
    import yaml

    assert yaml.safe_load((out / "recipe.yaml").read_text())["self_training"]["round0_mixed_precision"] == setting
    said = "Round 0 trained in fp32, the later rounds in bf16" in (out / "report.html").read_text()
    assert said == (setting == "no")  # the report says so where the precisions differ


@pytest.mark.parametrize("setting, labelled, classes, rounds", [
    ("auto", 16, 2, 2), ("auto", 32, 2, 2), ("auto", 33, 2, 1), ("auto", 128, 2, 1), ("auto", 90, 6, 2),
    (1, 16, 2, 1), (3, 1000, 2, 3)])
def test_rounds_auto_trains_a_second_round_only_with_few_labels(setting, labelled, classes, rounds, caplog):
    from textxfer.tools.self_training import FEW_LABELS_PER_CLASS, rounds_to_train

    assert FEW_LABELS_PER_CLASS == 16  # the boundary the cases above sit on
    with caplog.at_level(logging.WARNING, logger="textxfer"):
        assert rounds_to_train(setting, labelled, classes) == rounds
    said = [r.getMessage() for r in caplog.records if "rounds: auto" in r.getMessage()]
    assert len(said) == (setting == "auto")  # `auto` says what it chose, once; a number is taken as given
    if said:
        assert f"{labelled / classes:.1f} per class" in said[0] and said[0].startswith(f"self-training: {rounds} round")


def test_rounds_auto_is_the_default_and_trains_two_rounds_on_few_labels(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    recipe = self_training_recipe(tiny_models, tiny_data, out, unlabelled)
    del recipe["self_training"]["rounds"]
    train(recipe)
    history = json.loads((out / "history.json").read_text())["self_training"]
    labelled = history["rounds"][0]["training_examples"]
    assert labelled <= 16 * 3  # three classes, few labels each: `auto` trains two rounds
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2] and history["settings"]["rounds"] == "auto"


def test_label_column_of_unlabelled_file_is_ignored_and_said_once(tiny_models, tiny_data, tmp_path, caplog):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED, ["no-such-label"] * len(UNLABELLED))
    with caplog.at_level(logging.WARNING, logger="textxfer"):
        train(self_training_recipe(tiny_models, tiny_data, tmp_path / "run", unlabelled))
    said = [r for r in caplog.records if "label column" in r.getMessage() and "ignored" in r.getMessage()]
    assert len(said) == 1 and str(unlabelled) in said[0].getMessage()


def test_test_split_decides_nothing(tiny_models, tiny_data, tmp_path):
    """The test file's labels (and texts other than for the leak rule) never change what is kept or learned."""
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    val = tiny_data["validation"].read_text().splitlines()
    flip = {"pos": "neg", "neg": "sport", "sport": "pos"}
    tests = {"right": val, "flipped": [val[0]] + [f"{t},{flip[y]}" for t, y in (r.rsplit(",", 1) for r in val[1:])]}
    records, preds = {}, {}
    for name, rows in tests.items():
        path = tmp_path / f"test-{name}.csv"
        path.write_text("\n".join(rows) + "\n")
        out = tmp_path / name
        train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, data__test=str(path), rounds=2))
        records[name] = [{k: r.get(k) for k in ("kept", "per_class", "min_confidence")}
                         for r in json.loads((out / "history.json").read_text())["self_training"]["rounds"]]
        preds[name] = [json.loads(line)["pred"] for line in (out / "predictions" / "test.jsonl").read_text().splitlines()]
    assert records["right"] == records["flipped"]
    assert preds["right"] == preds["flipped"]


def test_unlabelled_texts_equal_to_test_texts_are_never_pseudo_labelled(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    test_rows = [(f"truly {w} film", y) for w, y in (("good", "pos"), ("bad", "neg"), ("goal", "sport"),
                                                     ("great", "pos"), ("awful", "neg"), ("ball", "sport"))]
    test = tmp_path / "test.csv"
    test.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in test_rows))
    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED + [t for t, _ in test_rows])
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, data__test=str(test)))
    record = json.loads((out / "history.json").read_text())["self_training"]
    assert record["unlabelled_counts"]["in_test"] == len(test_rows)
    assert record["unlabelled_counts"]["kept"] == len(UNLABELLED)
    assert record["rounds"][1]["scored"] == len(UNLABELLED)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.csv", r"missing\.csv does not exist \(recipe key `data\.unlabelled`\)"),
    (lambda p: (p / "cols.csv").write_text("words,label\nhi,pos\n") and p / "cols.csv",
     r"cols\.csv has no column `text`"),
    (lambda p: (p / "empty.csv").write_text("") or p / "empty.csv", r"empty\.csv is empty"),
])
def test_bad_unlabelled_file_is_named(tiny_models, tiny_data, tmp_path, make, message):
    from textxfer.tools.train import train

    with pytest.raises(UserError, match=message):
        train(self_training_recipe(tiny_models, tiny_data, tmp_path / "run", make(tmp_path)))
    assert not (tmp_path / "run" / "run.json").exists()


def test_unlabelled_file_of_training_texts_only_is_refused_naming_it(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "same.csv", csv_texts(tiny_data["train"]))
    with pytest.raises(UserError, match=r"same\.csv .*no unlabelled text is left.*in_train"):
        train(self_training_recipe(tiny_models, tiny_data, tmp_path / "run", unlabelled))


def test_plain_text_file_is_one_text_per_line(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    path = tmp_path / "u.txt"
    path.write_text("\n".join(UNLABELLED) + "\n\n")
    out = tmp_path / "run"
    train(self_training_recipe(tiny_models, tiny_data, out, path))
    counts = json.loads((out / "history.json").read_text())["self_training"]["unlabelled_counts"]
    assert counts["kept"] == len(UNLABELLED) and counts["empty"] == 1


@pytest.mark.parametrize("over, message", [
    ({"self_training__rounds": 0}, r"self_training\.rounds` must be `auto` or an integer >= 1, not 0"),
    ({"self_training__rounds": "many"}, r"self_training\.rounds"),
    ({"self_training__per_class": 0}, r"self_training\.per_class` must be >= 1"),
    ({"self_training__retrain": "body"}, r"self_training\.retrain"),
    ({"data__multi_label": True}, r"data\.unlabelled` with `data\.multi_label: true"),
])
def test_recipe_checks(tiny_models, tiny_data, tmp_path, over, message):
    from textxfer.config.reading import load_recipe

    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", data__unlabelled="u.csv", **over)
    with pytest.raises(UserError, match=message):
        load_recipe(data=recipe)


def test_resume_is_refused(tiny_models, tiny_data, tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    with pytest.raises(UserError, match="does not continue a self-training run"):
        train(self_training_recipe(tiny_models, tiny_data, tmp_path / "run", unlabelled), resume=True)


# ------------------------------------------------------------------------------------------ compare

def test_compare_variant_self_training_against_the_recipe_alone(tiny_models, tiny_data, tmp_path):
    import csv

    import yaml
    from click.testing import CliRunner

    from textxfer.cli.main import cli
    from textxfer.tools.compare_runs import variant_recipe

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    data = self_training_recipe(tiny_models, tiny_data, tmp_path / "unused", unlabelled, training__epochs=1,
                                training__checkpoint_every=None)
    assert variant_recipe(data, "self-training", None, 0, tmp_path / "r")["data"]["unlabelled"] == str(unlabelled)
    for variant in ("recipe", "head", "full"):  # every other variant: the labelled examples alone
        assert variant_recipe(data, variant, None, 0, tmp_path / "r")["data"]["unlabelled"] is None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "recipe,self-training", "--seeds", "1",
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["strategy"]: r for r in csv.DictReader(open(out / "compare.csv"))}
    assert rows["recipe"]["runs_ok"] == "1" and rows["self-training"]["runs_ok"] == "1"
    assert "self_training" in json.loads((out / "runs" / "all-self-training-seed0" / "history.json").read_text())
    assert "self_training" not in json.loads((out / "runs" / "all-recipe-seed0" / "history.json").read_text())


def test_compare_self_training_without_unlabelled_texts_is_refused(tiny_models, tiny_data, tmp_path):
    import yaml
    from click.testing import CliRunner

    from textxfer.cli.main import cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "unused")))
    result = CliRunner().invoke(cli, ["compare", str(recipe), "--strategies", "head,self-training",
                                      "--output-dir", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "data.unlabelled" in result.output


def test_average_bodies_averages_the_body_and_keeps_the_second_models_classifier(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textxfer.tools.weight_average import average_bodies

    saved = []
    for i in range(2):
        m = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=3)
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(2.0 * i)  # first: every weight 0; second: every weight 2
        m.save_pretrained(tmp_path / f"m{i}")
        AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(tmp_path / f"m{i}")
        saved.append(tmp_path / f"m{i}")
    out = average_bodies(saved[0], saved[1], tmp_path / "avg", weight=0.25)
    avg = AutoModelForSequenceClassification.from_pretrained(out)
    body = getattr(avg, avg.base_model_prefix)
    assert all(torch.allclose(p, torch.full_like(p, 0.5)) for p in body.parameters())  # 0.75 * 0 + 0.25 * 2
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for n, p in avg.named_parameters()
               if not n.startswith(avg.base_model_prefix + "."))  # the classifier: the second model's
    assert (out / "tokenizer_config.json").is_file() and (out / "model.safetensors").is_file()
    other = AutoModelForSequenceClassification.from_pretrained(tiny_models["roberta"], num_labels=3)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="not the same architecture"):
        average_bodies(saved[0], tmp_path / "other", tmp_path / "bad")


def test_average_bodies_trains_the_classifier_on_round_0_and_the_last_rounds_averaged_body(tiny_models, tiny_data,
                                                                                           tmp_path):
    from textxfer.tools.train import train

    unlabelled = write_unlabelled(tmp_path / "u.csv", UNLABELLED)
    out = tmp_path / "run"
    result = train(self_training_recipe(tiny_models, tiny_data, out, unlabelled, data__test=str(tiny_data["validation"]),
                                        self_training__average_bodies=True))
    rounds = json.loads((out / "history.json").read_text())["self_training"]["rounds"]
    averaged = rounds[-1]["averaged_body"]
    assert averaged["rounds"] == [0, 1] and averaged["weight"] == 0.5 and averaged["seconds"] > 0
    assert "strategy full" in (out / "self_training" / "round-1.log").read_text()  # the round trained the body
    assert "strategy head" in (out / "train.log").read_text()  # the run: the classifier on the averaged body
    assert "test" in result.metrics and "class_mix_shift" in rounds[-1]
    run = json.loads((out / "run.json").read_text())
    shift = rounds[-1]["class_mix_shift"]["seconds"]  # the shift makes the saved model: its time is training's
    assert shift > 0 and run["train_seconds"] >= sum(r["train_seconds"] for r in rounds) + averaged["seconds"] + shift
    assert json.loads((out / "metrics.json").read_text())["self_training"]["rounds"][-1]["averaged_body"] == averaged
    assert "averaged weight by weight" in (out / "report.html").read_text()
    assert not list(tmp_path.glob(".self-training-*"))
    # retrain: head keeps round 0's body in every round: nothing to average
    head = tmp_path / "head"
    train(self_training_recipe(tiny_models, tiny_data, head, unlabelled, self_training__average_bodies=True,
                               self_training__retrain="head"))
    assert "averaged_body" not in json.loads((head / "history.json").read_text())["self_training"]["rounds"][-1]
