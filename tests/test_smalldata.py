"""Small-data knobs: mean pooling (exact, and what plain transformers predicts), layer-wise LR decay, head warm-up,
gradual unfreezing, re-initialised top layers, the contrastive stage. Tiny random models; a few short runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_recipe

from textxfer.backbones.load import load_classifier
from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError
from textxfer.engine.contrastive import pair_batches, pair_loss
from textxfer.engine.optim import layerwise_groups
from textxfer.engine.schedule import Schedule
from textxfer.strategies.apply import apply_strategy
from textxfer.strategies.smalldata import add_mean_pooling, prepare_model


def _recipe(tiny_models, tiny_data, tmp_path, arch="bert", **over):
    return load_recipe(data=tiny_recipe(tiny_models[arch], tiny_data, tmp_path / "run", **over))


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ------------------------------------------------------------------------------------------ training.head_l2

@pytest.mark.parametrize("arch,expected", [("bert", ["classifier.weight"]),
                                           ("roberta", ["classifier.dense.weight", "classifier.out_proj.weight"])])
def test_head_l2_penalises_the_new_heads_weight_matrices_only(tiny_models, arch, expected):
    from textxfer.engine.optim import head_weight_matrices

    model, parts = load_classifier(str(tiny_models[arch]), ["a", "b", "c"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in head_weight_matrices(model, parts)] == expected  # no bias, no pretrained pooler


def test_add_head_l2_adds_the_penalty_gradient():
    """fp32 arithmetic on given tensors (no model, no autocast): torch's default fp32 tolerance."""
    from textxfer.engine.optim import add_head_l2

    w, frozen = torch.nn.Parameter(torch.tensor([[1.0, -2.0]])), torch.nn.Parameter(torch.ones(1, 2))
    w.grad = torch.tensor([[0.5, 0.5]])
    add_head_l2([w, frozen], 0.25)
    torch.testing.assert_close(w.grad, torch.tensor([[0.75, 0.0]]))
    assert frozen.grad is None  # not trained at this step: left alone


def test_head_l2_shrinks_the_head_and_its_confidence(tiny_models, tiny_data, tmp_path):
    """The same head-only run (no validation split: the last epoch is saved) without and with the penalty: the
    penalised head's weights are smaller and its probabilities less extreme; a negative value is refused."""
    from textxfer.tools.train import train

    common = dict(strategy__name="head", training__epochs=6, training__head_learning_rate=5e-2,
                  training__checkpoint_every=None, data__validation=None, data__validation_split=0,
                  data__test=str(tiny_data["validation"]))
    runs = {}
    for l2 in (0.0, 2000.0):
        out = tmp_path / f"l2-{l2:g}"
        train(tiny_recipe(tiny_models["bert"], tiny_data, out, training__head_l2=l2, **common))
        rows = (out / "predictions" / "test.jsonl").read_text().splitlines()
        confidence = np.mean([json.loads(row)["confidence"] for row in rows])
        runs[l2] = (float(_weights(out / "model")["classifier.weight"].norm()), confidence)
    assert runs[2000.0][0] < 0.25 * runs[0.0][0]
    assert runs[2000.0][1] < runs[0.0][1]
    with pytest.raises(UserError, match="training.head_l2"):
        _recipe(tiny_models, tiny_data, tmp_path, training__head_l2=-1)


# ------------------------------------------------------------------------------------------ model.pooling: mean

@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra", "deberta-v2", "xlm-roberta"])
def test_mean_pooling_is_the_masked_mean_and_survives_save(tiny_models, tmp_path, arch):
    """Precision: fp32 in both modes (the model runs outside the training loop, no autocast). The pooled state is
    held to 1e-2 by design, not by precision: the layer computes LayerNorm(mean + first token / POOL_GAIN), not
    LayerNorm(mean). Padding and a save/reload change fp32's summation order at most (1e-5; default tolerance).
    Mean pooling under bf16 is covered by the runs below, which train with it at the suite's precision."""
    from transformers import AutoModelForSequenceClassification

    model, parts = load_classifier(str(tiny_models[arch]), ["a", "b", "c"])
    n = len(parts.layers)
    add_mean_pooling(model, parts)
    assert len(parts.layers) == n  # the averaging layer is not a layer group
    model.eval()
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 8, 12, 14, 15, 16, 3]])
    mask = (ids != 0).long()
    base = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h, m = out.hidden_states[-2], mask.unsqueeze(-1).float()
    mean = (h * m).sum(1) / m.sum(1)
    torch.testing.assert_close(out.hidden_states[-1][:, 0], torch.nn.functional.layer_norm(mean, mean.shape[-1:]),
                               atol=1e-2, rtol=1e-2)
    # padding does not change the pooled result: first text alone == first text in the padded batch
    with torch.no_grad():
        alone = model(input_ids=ids[:1, :5], attention_mask=mask[:1, :5]).logits
        padded = model(input_ids=ids, attention_mask=mask).logits[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits)
    assert again.config.textxfer_pooling in again.config.textxfer_frozen_modules


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra", "deberta-v2"])
def test_pooling_layer_cut_to_position_0_keeps_the_logits(tiny_models, arch):
    """The contrastive stage runs the pooling layer's feed-forward on position 0 alone: tried, and refused where
    it would change the result (DistilBERT adds the residual outside its attention block).

    Precision: fp32 in both modes (outside the training loop, no autocast); measured exact, 1e-5 allows fp32's
    summation order. The stage runs with the cut at the suite's precision in test_contrastive_run_end_to_end."""
    from textxfer.backbones.pooling import cut_pooling_to_first

    model, parts = load_classifier(str(tiny_models[arch]), ["a", "b"])
    add_mean_pooling(model, parts)
    model.eval()
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 8, 12, 14, 15, 16, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits
        handle = cut_pooling_to_first(model)
        assert (handle is None) == (arch == "distilbert")
        if handle is not None:
            base = getattr(model, model.base_model_prefix)
            assert base(input_ids=ids, attention_mask=mask).last_hidden_state.shape[1] == 1  # the cut is active
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, whole, atol=1e-5, rtol=1e-4)
            handle.remove()


def test_mean_pooling_refused_for_albert(tiny_models):
    model, parts = load_classifier(str(tiny_models["albert"]), ["a", "b"])
    with pytest.raises(UserError, match="ALBERT"):
        add_mean_pooling(model, parts)


def test_pooling_layer_never_trains(tiny_models, tiny_data, tmp_path):
    r = _recipe(tiny_models, tiny_data, tmp_path, model__pooling="mean", strategy__name="full")
    model, parts = load_classifier(r.model.name, ["neg", "pos", "sport"])
    parts = prepare_model(model, parts, r)
    apply_strategy(model, parts, r.strategy)
    pool = model.config.textxfer_pooling
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(pool + "."))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("bert.encoder.layer.1."))


# ------------------------------------------------------------------------------------------ layer_lr_decay

def test_layer_lr_decay_groups(tiny_models):
    """Learning rates are Python arithmetic: no precision setting enters."""
    model, parts = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    groups = layerwise_groups(model, parts, lr=1e-3, head_lr=1e-2, weight_decay=0.01, decay=0.5)
    by_name = {g["name"].split(" ")[0]: g["lr"] for g in groups}
    assert by_name["new-head"] == pytest.approx(1e-2)
    assert by_name["layer.1"] == pytest.approx(1e-3)
    assert by_name["layer.0"] == pytest.approx(5e-4)
    assert by_name["embeddings"] == pytest.approx(2.5e-4)
    assert by_name["head"] == pytest.approx(1e-3)  # the pretrained pooler: top-layer rate
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["weight_decay"] == 0.0 for g in groups if "no decay" in g["name"])


def test_layer_lr_decay_validated(tiny_models, tiny_data, tmp_path):
    with pytest.raises(UserError, match="layer_lr_decay"):
        _recipe(tiny_models, tiny_data, tmp_path, training__layer_lr_decay=1.5)


# ------------------------------------------------------------------------------------------ warm-up and gradual

def _schedule(parts, model, strategy="gradual", warmup=0.0, every="epoch", floor=0, steps_per_epoch=4) -> Schedule:
    recipe = load_recipe(data={"model": {"name": "x"}, "data": {"train": "x"},
                               "strategy": {"name": strategy, "unfreeze_every": every, "freeze_layers": floor},
                               "training": {"head_warmup_epochs": warmup, "epochs": 10}})
    return Schedule(recipe, steps_per_epoch, model, parts, floor)


def test_schedule_head_warmup_then_gradual_top_down(tiny_models):
    model, parts = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    apply_strategy(model, parts, load_recipe(data={"model": {"name": "x"}, "data": {"train": "x"},
                                                   "strategy": {"name": "gradual"}}).strategy)
    s = _schedule(parts, model, warmup=0.5, every=3)
    assert s.warmup_steps == 2
    assert [s.groups_open(i) for i in range(9)] == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert s.trains(None, 0) and not s.trains(0, 0)  # head always; the top layer (depth 0) not during warm-up
    assert s.trains(0, 2) and not s.trains(1, 2) and s.trains(1, 5)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embeddings" in n)

    seen = []
    for i in (0, 2, 5):  # the loop runs each optimizer step inside the schedule's gate for that step
        with s.gate(i):
            seen.append({n for n, p in model.named_parameters() if p.requires_grad})
    assert not any(n.startswith("bert.encoder.layer") for n in seen[0])
    assert any(n.startswith("bert.encoder.layer.1.") for n in seen[1])
    assert not any(n.startswith("bert.encoder.layer.0.") for n in seen[1])
    assert any(n.startswith("bert.encoder.layer.0.") for n in seen[2])
    # outside a step every parameter the run trains is marked trainable (best copies and checkpoints see them all)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("bert.encoder.layer.0."))


def test_head_warmup_alone_is_head_then_everything(tiny_models):
    model, parts = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    s = _schedule(parts, model, strategy="full", warmup=1.0)
    assert [s.groups_open(i) for i in (0, 3, 4, 100)] == [0, 0, None, None]


def test_gradual_run_trains_top_first_and_never_the_floor(tiny_models, tiny_data, tmp_path):
    """A real run: gradual with a floor of 1 layer; layer 0 and embeddings never move, layer 1 and the head do;
    the model loads in plain transformers and predicts what the run predicted.

    Precision: the suite's for training. Frozen weights are never written, so they equal the checkpoint's in both
    modes; the pipeline check compares fp32 with fp32 in both modes (see _assert_pipeline_agrees)."""
    from textxfer.tools.train import train

    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", strategy__name="gradual",
                         strategy__freeze_layers=1, training__head_warmup_epochs=0.5, training__layer_lr_decay=0.8,
                         training__epochs=2, training__learning_rate=3e-2, training__metric="loss",
                         training__checkpoint_every=None)
    train(recipe)
    before, after = _weights(tiny_models["bert"]), _weights(tmp_path / "run" / "model")
    for name, w in before.items():
        key = name if name in after else f"bert.{name}"
        if ".layer.0." in name or "embeddings" in name:
            torch.testing.assert_close(after[key], w)
    assert any(not torch.equal(after[f"bert.{n}" if f"bert.{n}" in after else n], w)
               for n, w in before.items() if ".layer.1." in n)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "training head only" in log and "head + top 1 layer group" in log
    _assert_pipeline_agrees(tmp_path / "run")


def _assert_pipeline_agrees(run):
    """pipeline() on the saved model predicts the run's saved predictions. fp32 against fp32 whatever the training
    precision (the run writes its predictions from its final fp32 evaluation): the same labels, and confidences to
    1e-4 (batching and padding change fp32's summation order only)."""
    from transformers import pipeline

    rows = [json.loads(line) for line in open(run / "predictions" / "validation.jsonl")]
    out = pipeline("text-classification", str(run / "model"))([r["text"] for r in rows])
    assert [o["label"] for o in out] == [r["pred"] for r in rows]
    assert max(abs(o["score"] - r["confidence"]) for o, r in zip(out, rows, strict=True)) < 1e-4


# ------------------------------------------------------------------------------------------ reinit_layers

def test_reinit_top_layers(tiny_models, tiny_data, tmp_path):
    """fp32 weights, no forward: untouched tensors bit-identical, the re-drawn ones at the initialiser's std (0.02,
    to 30%: a statistic of one random draw of 32 x 32 values)."""
    r = _recipe(tiny_models, tiny_data, tmp_path, strategy__name="freeze", strategy__reinit_layers=1)
    model, parts = load_classifier(r.model.name, ["neg", "pos", "sport"])
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare_model(model, parts, r)
    now = dict(model.named_parameters())
    q1 = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(now[q1], original[q1])
    assert float(now[q1].std()) == pytest.approx(0.02, rel=0.3)
    assert torch.equal(now["bert.encoder.layer.0.attention.self.query.weight"],
                       original["bert.encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(now["bert.encoder.layer.1.output.LayerNorm.weight"],
                       torch.ones_like(now["bert.encoder.layer.1.output.LayerNorm.weight"]))


@pytest.mark.parametrize("over, match", [
    ({"strategy__name": "head", "strategy__reinit_layers": 1}, "never train"),
    ({"strategy__name": "freeze", "strategy__freeze_layers": 2, "strategy__reinit_layers": 1}, "frozen lower"),
    ({"strategy__name": "full", "strategy__reinit_layers": 3}, "2 layer groups"),
])
def test_reinit_layers_errors(tiny_models, tiny_data, tmp_path, over, match):
    with pytest.raises(UserError, match=match):
        r = _recipe(tiny_models, tiny_data, tmp_path, **over)
        model, parts = load_classifier(r.model.name, ["neg", "pos", "sport"])
        prepare_model(model, parts, r)


# ------------------------------------------------------------------------------------------ contrastive stage

def test_pair_batches_are_linear_and_cover_every_example():
    targets = np.repeat(np.arange(10), 7)  # 10 classes x 7
    batches = pair_batches(targets, batch_size=16, per_class=4, seed=0, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(70))  # each example exactly once per pass: cost linear in the data
    assert all(len(b) >= 2 for b in batches)
    # same-class groups: most examples meet at least one positive in their batch
    with_pos = sum(sum(targets[j] == targets[i] for j in b) > 1 for b in batches for i in b)
    assert with_pos >= 60
    assert pair_batches(targets, 16, 4, 0, 1) != batches  # reshuffled each pass
    assert pair_batches(targets, 16, 4, 0, 0) == batches  # deterministic
    lengths = np.random.default_rng(0).integers(3, 60, size=70)
    grouped = pair_batches(targets, 16, 4, 0, 0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(70))
    padded = lambda bs: sum(len(b) * int(lengths[b].max()) for b in bs)  # noqa: E731
    assert padded(grouped) < padded(batches)  # length-grouped: less padding


def test_pair_loss_is_zero_when_classes_are_separated():
    """fp32 arithmetic on given embeddings (no autocast): zero to 1e-6, fp32's rounding of the cosines."""
    y = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[1.0, 0], [2.0, 0], [0, 1.0], [0, 3.0]])
    assert float(pair_loss(perfect, y, "cosine")) == pytest.approx(0.0, abs=1e-6)
    mixed = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]])
    assert float(pair_loss(mixed, y, "cosine")) == pytest.approx(0.75)  # positives 1.0, negatives 0.5
    assert float(pair_loss(perfect, y, "supcon", 0.1)) < float(pair_loss(mixed, y, "supcon", 0.1))


def test_multi_label_pairs_share_a_label():
    """Multi-hot rows (as SetFit): a pair is positive when the two share a label, or when neither has one; groups
    are keyed by each row's rarest label; the stage needs at least one pair sharing nothing. The loss: fp32
    arithmetic on given embeddings (no autocast), zero to 1e-6."""
    from textxfer.engine.contrastive import group_keys, has_negative_pair, same_label

    t = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    assert same_label(torch.as_tensor(t)).tolist() == [
        [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1]]
    assert group_keys(t).tolist() == [0, 0, 1, 2, -1, -1]  # row 1: labels 0 and 1 equally rare, the lower wins
    assert group_keys(np.array([[0, 1, 1], [0, 1, 0], [0, 1, 0]])).tolist() == [2, 1, 1]  # label 2 rarer than 1
    assert group_keys(np.array([2, 0, 1])).tolist() == [2, 0, 1]  # single-label: the class
    assert has_negative_pair(t) and has_negative_pair(np.array([0, 1]))
    assert not has_negative_pair(np.array([[1, 0], [1, 1], [1, 0]]))  # every pair shares label 0
    assert not has_negative_pair(np.array([1, 1, 1]))
    perfect = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    y = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    assert float(pair_loss(perfect, y, "cosine")) == pytest.approx(0.0, abs=1e-6)


def _multi_label_data(tmp_path, every: str | None = None) -> dict:
    """Texts tagged with one or two of pos / neg / sport (each word says its label); `every`: a label on every row."""
    import random

    words = {"pos": "good", "neg": "bad", "sport": "goal"}
    rng = random.Random(0)
    combos = [(w,) for w in words] * 2 + [("pos", "sport"), ("neg", "sport")]  # mostly one label, as in real data
    rows = []
    for i in range(60):
        combo = tuple(dict.fromkeys(combos[i % len(combos)] + ((every,) if every else ())))
        text = " ".join(rng.sample(["the", "a", "film", "was"], 2) + [words[c] for c in combo])
        rows.append(f"{text}\t{','.join(combo)}")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.tsv").write_text("text\tlabels\n" + "\n".join(rows[:48]) + "\n")
    (tmp_path / "dev.tsv").write_text("text\tlabels\n" + "\n".join(rows[48:]) + "\n")
    return {"train": tmp_path / "train.tsv", "validation": tmp_path / "dev.tsv"}


def test_contrastive_stage_on_multi_label_data(tiny_models, tmp_path):
    """The stage runs on multi-label data and learns (its loss falls); the classifier after it is multi-label and
    the saved model predicts what the run did. A label on every row leaves no negative pair:
    a clear error naming it.

    Precision: the suite's for training; the saved model's predictions equal the run's in both modes, both being
    fp32 (load(); the run's final fp32 evaluation)."""
    from textxfer.tools.train import train

    def recipe(data, out):
        r = tiny_recipe(tiny_models["bert"], data, out, model__pooling="mean", strategy__name="freeze",
                        strategy__freeze_layers=1, training__epochs=4, training__head_learning_rate=1e-2,
                        training__checkpoint_every=None, training__metric="micro_f1", training__log_every=1,
                        training__contrastive={"epochs": 8, "batch_size": 16, "same_class_per_batch": 2,
                                               "learning_rate": 3e-3})
        r["data"].update({"multi_label": True, "label_column": "labels", "format": "tsv"})
        return r

    result = train(recipe(_multi_label_data(tmp_path / "ok"), tmp_path / "run"))
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    losses = [e["loss"] for e in hist["contrastive"]]
    assert hist["contrastive_stage"]["steps"] == 24 and np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])  # pass 8 vs 1
    assert result.metrics["validation"]["micro_f1"] > 0.5
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run" / "model").problem_type == "multi_label_classification"
    import textxfer

    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions" / "validation.jsonl").read_text().splitlines()]
    again = textxfer.load(tmp_path / "run").predict([r["text"] for r in rows])
    assert [sorted(x["label"] for x in p) for p in again] == [sorted(r["pred"]) for r in rows]
    with pytest.raises(UserError, match=r"every example carrying the label 'sport'"):
        train(recipe(_multi_label_data(tmp_path / "bad", every="sport"), tmp_path / "bad-run"))


def test_multi_label_thresholds_are_never_tuned_on_the_test_set(tiny_models, tmp_path):
    """No validation split: the tuned threshold modes take the one threshold that maximises the micro-F1 expected
    under the model's own probabilities on the training texts (and say so), never one fitted to the test labels
    they are then scored on; with or without a test set the saved model carries it.

    Precision: the suite's for training; the thresholds are fp32 on both sides in both modes (the run tunes them in
    its final fp32 pass, load() predicts in fp32). 0.011 allows one step of the 0.01 threshold grid: the run scores
    the training texts in its own batches, load() in others."""
    import csv

    from textxfer.core.metrics import expected_f1_thresholds
    from textxfer.modalities.text.predict import load
    from textxfer.outputs.card import model_card
    from textxfer.tools.train import train

    data = _multi_label_data(tmp_path / "d")
    runs = {}
    for name, test in (("with-test", str(data["validation"])), ("no-test", None)):
        r = tiny_recipe(tiny_models["bert"], {"train": data["train"], "validation": data["train"]}, tmp_path / name,
                        strategy__name="head", training__checkpoint_every=None, training__metric="micro_f1")
        r["data"].update({"multi_label": True, "label_column": "labels", "format": "tsv", "validation": None,
                          "validation_split": 0, "test": test})
        runs[name] = train(r)
    thresholds = runs["with-test"].metrics["thresholds"]
    assert len(set(thresholds)) == 1 and thresholds != [0.5] * 3
    with open(data["train"], newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f, delimiter="\t")]
    clf = load(tmp_path / "with-test")
    assert clf.thresholds == pytest.approx(expected_f1_thresholds(clf.probabilities(texts)), abs=0.011)
    assert load(tmp_path / "no-test").thresholds.tolist() == pytest.approx(thresholds)
    assert "no validation split to tune them on" in (tmp_path / "with-test" / "train.log").read_text()
    assert "maximises the F1 expected" in model_card(tmp_path / "with-test", "merged")


def test_expected_f1_thresholds_cut_calibrated_probabilities_below_half():
    """With probabilities as the only evidence, the expected-F1 threshold admits a label at probability 0.4 when
    most labels sit far lower: the decision a calibrated few-shot classifier needs (0.5 would admit none).
    float64 arithmetic on given probabilities: no precision setting enters."""
    from textxfer.core.metrics import expected_f1_thresholds, tune_thresholds

    probs = np.array([[0.45, 0.05, 0.02], [0.03, 0.40, 0.04], [0.05, 0.02, 0.42], [0.04, 0.03, 0.02]])
    t = expected_f1_thresholds(probs)
    assert 0.05 < t[0] <= 0.40 and (t == t[0]).all()
    # hard 0/1 targets tune as before: the soft-target arithmetic is the same counting
    hard = (probs > 0.3).astype(np.float32)
    assert tune_thresholds(probs, hard, "global")[0] == pytest.approx(0.40)


def test_contrastive_run_end_to_end(tiny_models, tiny_data, tmp_path):
    """Contrastive stage (upper layer, mean pooling), then the head alone on cached embeddings; the saved model
    predicts in plain transformers exactly what the run did.

    Precision: the suite's for training. The frozen lower layer equals the checkpoint's in both modes (never
    written); the pipeline check is fp32 against fp32 in both modes (see _assert_pipeline_agrees)."""
    from textxfer.tools.train import train

    recipe = tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", model__pooling="mean",
                         strategy__name="freeze", strategy__freeze_layers=1, training__epochs=4,
                         training__head_learning_rate=1e-2, training__checkpoint_every=None,
                         training__contrastive={"epochs": 3, "batch_size": 8, "learning_rate": 1e-3})
    result = train(recipe)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    losses = [e["loss"] for e in hist["contrastive"]]
    assert hist["contrastive_stage"]["steps"] == 18 and losses[-1] < losses[0]
    before, after = _weights(tiny_models["bert"]), _weights(tmp_path / "run" / "model")
    assert not torch.equal(after["bert.encoder.layer.1.attention.self.query.weight"],
                           before["encoder.layer.1.attention.self.query.weight"])
    torch.testing.assert_close(after["bert.encoder.layer.0.attention.self.query.weight"],
                               before["encoder.layer.0.attention.self.query.weight"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["trainable_params"] < 200  # after the stage only the classifier trained
    assert result.metrics["validation"]["accuracy"] > 0.5
    _assert_pipeline_agrees(tmp_path / "run")


def test_contrastive_stage_skipped_below_min_examples(tiny_models, tiny_data, tmp_path):
    """Too few examples: no stage, the body stays pretrained and only the classifier trains (as strategy head).

    Precision: the suite's; exact in both modes (measured 0 under bf16): with the stage skipped the run computes
    what strategy head computes, op for op and under the same autocast, so bf16 rounds both alike. 1e-6 for both."""
    from textxfer.tools.train import train

    common = dict(model__pooling="mean", training__epochs=2, training__checkpoint_every=None, training__seed=3)
    train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "skip", strategy__name="freeze",
                      strategy__freeze_layers=1, training__contrastive={"epochs": 3, "min_examples": 10_000}, **common))
    train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "head", strategy__name="head", **common))
    hist = json.loads((tmp_path / "skip" / "history.json").read_text())
    assert hist["contrastive_stage"]["skipped"] is True and not hist.get("contrastive")
    assert "contrastive stage: skipped" in (tmp_path / "skip" / "train.log").read_text()
    skip, head = _weights(tmp_path / "skip" / "model"), _weights(tmp_path / "head" / "model")
    assert skip.keys() == head.keys()
    for name in skip:
        torch.testing.assert_close(skip[name], head[name], atol=1e-6, rtol=0)


def test_contrastive_single_class_training_set(tiny_models, tmp_path):
    from textxfer.tools.train import train

    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"good film {i},pos\n" for i in range(6)))
    (tmp_path / "v.csv").write_text("text,label\ngood,pos\ngreat,pos\n")
    recipe = tiny_recipe(tiny_models["bert"], {"train": tmp_path / "t.csv", "validation": tmp_path / "v.csv"},
                         tmp_path / "run", strategy__name="freeze", strategy__freeze_layers=1,
                         data__labels=["neg", "pos"], training__contrastive={"epochs": 1})
    with pytest.raises(UserError, match=r"only one class \(pos\)"):
        train(recipe)


def test_contrastive_needs_a_body_to_tune(tiny_models, tiny_data, tmp_path):
    with pytest.raises(UserError, match="strategy `head` freezes all of it"):
        _recipe(tiny_models, tiny_data, tmp_path, strategy__name="head", training__contrastive={"epochs": 1})
    with pytest.raises(UserError, match="batch_size"):
        _recipe(tiny_models, tiny_data, tmp_path, strategy__name="full", training__contrastive={"batch_size": 1})


def test_new_keys_have_documented_defaults():
    r = load_recipe(data={"model": {"name": "x"}, "data": {"train": "x"}})
    assert (r.model.pooling, r.training.layer_lr_decay, r.training.head_warmup_epochs, r.training.contrastive,
            r.strategy.unfreeze_every, r.strategy.reinit_layers, r.training.head_l2) == \
        ("cls", 1.0, 0.0, None, "epoch", 0, 0.0)
    c = load_recipe(data={"model": {"name": "x"}, "data": {"train": "x"}, "strategy": {"name": "freeze"},
                          "training": {"contrastive": {}}}).training.contrastive
    assert (c.epochs, c.learning_rate, c.batch_size, c.then, c.loss) == (6, 2e-4, 16, "head", "cosine")
    import inspect

    from textxfer.config import schema as recipe_module

    source = inspect.getsource(recipe_module)
    for key in ("pooling:", "layer_lr_decay:", "head_warmup_epochs:", "contrastive:", "unfreeze_every:",
                "reinit_layers:", "same_class_per_batch:", "head_l2:"):
        after = source.split(key, 1)[1].splitlines()[1].strip()
        assert after.startswith('"""'), key


def test_padding_chunks_is_the_cheapest_split():
    """Exact: no contiguous split of the sorted lengths costs less (brute force over all splits), and every
    position appears once."""
    import itertools

    from textxfer.modalities.text.batching import padding_chunks

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, overhead = int(rng.integers(1, 9)), int(rng.integers(0, 40))
        lengths = rng.integers(1, 64, size=n)
        chunks = padding_chunks(lengths, overhead)
        assert sorted(i for c in chunks for i in c) == list(range(n))
        got = sum(len(c) * int(lengths[c].max()) + overhead for c in chunks)
        s = np.sort(lengths)
        best = min(sum((b - a) * int(s[b - 1]) + overhead for a, b in zip((0, *cuts), (*cuts, n), strict=True))
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        assert got == best
    assert padding_chunks(np.array([4, 40, 5, 39]), 0) == [[0], [2], [3], [1]]  # no overhead: no padding
    assert padding_chunks(np.array([4, 40, 5, 39]), 5) == [[0, 2], [3, 1]]
    assert padding_chunks(np.array([4, 40, 5, 39]), 1000) == [[0, 2, 3, 1]]


# Under bf16 autocast a chunk's padding changes the matmul shapes, so each layer's output is rounded differently
# to bf16's 8 significant bits (a step of 2**-8 = 0.4% of a value); over the tiny model's 2 layers and the mean
# pooling that is up to ~1e-2 on embeddings of size ~1. fp32 is exact to 1e-5.
CHUNK_TOLERANCE = {"no": 1e-5, "bf16": 3e-2}


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_contrastive_embeddings_in_chunks_equal_one_padded_batch(precision, tiny_models, tiny_data, tmp_path):
    """The stage's chunks change the padding, not the embeddings (dropout off), and keep the batch's order."""
    from textxfer.engine.contrastive import embed, embed_chunked
    from textxfer.engine.loop import Loop
    from textxfer.modalities.text.batching import Collator

    recipe = load_recipe(data=tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", model__pooling="mean",
                                          strategy__name="freeze", strategy__freeze_layers=1, training__cache="off",
                                          training__mixed_precision=precision))
    loop = Loop(recipe, tmp_path / "run")
    loop.build()
    loop.model.to(loop.acc.device).eval()  # where the stage runs it (prepare would move it there)
    enc = loop.encoded["train"]
    collate = Collator(enc, loop.tokenizer.pad_token_id)
    idx = list(np.argsort(-enc.lengths)[:3]) + list(np.argsort(enc.lengths)[:5])  # long and short: several chunks
    from textxfer.modalities.text.batching import padding_chunks

    assert len(padding_chunks(enc.lengths[idx], 0)) > 1
    ctx = loop.stage_context()
    with torch.no_grad():
        whole = embed(ctx, {k: v.to(loop.acc.device) for k, v in collate(idx).items()})
        chunked = embed_chunked(ctx, collate, idx)
    tol = CHUNK_TOLERANCE[precision]
    torch.testing.assert_close(chunked, whole, atol=tol, rtol=tol)


def test_too_few_optimizer_steps_are_warned_of(tiny_models, tiny_data, tmp_path):
    """A recipe's epochs and batch size carried to a few examples can leave a handful of steps: the run says so and
    names the keys to change; a run with enough steps does not."""
    from textxfer.tools.train import train

    train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "few", strategy__name="head", training__epochs=1,
                      training__batch_size=32))
    log = (tmp_path / "few" / "train.log").read_text()
    assert "only 2 optimizer step(s) (48 training examples, training.batch_size 32, training.epochs 1)" in log
    train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "enough", strategy__name="head"))
    assert "optimizer step(s)" not in (tmp_path / "enough" / "train.log").read_text()
