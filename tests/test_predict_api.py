"""`textxfer.load(DIR).predict(...)` from the user's side: a lone string or image path is one input, any iterable
of strings is read (numpy arrays, pandas Series, generators), and bad input (None, a dict, a missing value, a
number, a bad `top_k`/`batch_size`, pairs of another length, a missing image file) is a `UserError` naming the
argument and the position, for the PyTorch run and its ONNX export alike.

Precision: fp32 throughout (the saved model as stored, its fp32 export); the same texts given in another
container must give exactly the same labels and scores (same model, same batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_checkpoint

import textxfer
from textxfer.core.errors import UserError
from textxfer.outputs.onnx_export import export_run

TEXTS = ["good movie", "the plot was very bad", "sport ball goal"]


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT classifier (random head: three labels, scores differ per text) and its ONNX export."""
    base = tmp_path_factory.mktemp("predict-api")
    model = make_tiny_checkpoint("bert", base / "model", with_head=True)
    export_run(model, base / "onnx")
    return {"run": model, "export": base / "onnx"}


@pytest.fixture(scope="module", params=["run", "export"])
def clf(request, text_folders):
    return textxfer.load(text_folders[request.param])


# ------------------------------------------------------------------------------------------ one input or many

def test_a_lone_string_is_one_input_not_its_characters(clf):
    one = clf.predict("good movie")
    assert one == clf.predict(["good movie"]) and len(one) == 1
    assert clf.predict("good movie", top_k=2) == clf.predict(["good movie"], top_k=2)
    assert clf.predict("good movie", pairs="the goal") == clf.predict(["good movie"], pairs=["the goal"])


def test_any_iterable_of_strings_is_read_in_order(clf):
    want = clf.predict(TEXTS, top_k=2)
    assert len(want) == len(TEXTS)
    assert clf.predict(tuple(TEXTS), top_k=2) == want
    assert clf.predict(np.array(TEXTS), top_k=2) == want
    assert clf.predict(np.array(TEXTS, dtype=object), top_k=2) == want
    assert clf.predict(pd.DataFrame({"text": TEXTS})["text"], top_k=2) == want
    assert clf.predict(pd.Series(TEXTS, index=[7, 3, 5]), top_k=2) == want  # order, not the index
    assert clf.predict((t for t in TEXTS), top_k=2) == want
    assert clf.predict(TEXTS, pairs=np.array(TEXTS)) == clf.predict(TEXTS, pairs=TEXTS)
    assert clf.predict([]) == []


@pytest.mark.parametrize(("value", "match"), [
    (None, r"texts is None, so there is nothing to predict"),
    ({"text": "good movie"}, r"texts is a dict \(keys 'text'\): iterating it would predict its keys"),
    (b"good movie", r"texts is bytes: decode it"),
    (5, r"texts is 5 \(int\), not a string or a list of them"),
    (pd.DataFrame({"text": TEXTS}), r"texts is a 2-dimensional DataFrame: give one dimension.*df\['text'\]"),
    (np.array([TEXTS, TEXTS]), r"texts is a 2-dimensional ndarray"),
])
def test_what_is_not_texts_is_refused(clf, value, match):
    with pytest.raises(UserError, match=match):
        clf.predict(value)


# ------------------------------------------------------------------------------------------------- elements

@pytest.mark.parametrize(("bad", "match"), [
    (None, r"texts\[1\] is None, not a string"),
    (5, r"texts\[1\] is 5 \(int\), not a string"),
    (float("nan"), r"texts\[1\] is NaN \(float: a missing value"),
    (b"bytes", r"texts\[1\] is b'bytes' \(bytes\), not a string"),
])
def test_an_element_that_is_not_a_string_is_named_by_position(clf, bad, match):
    with pytest.raises(UserError, match=match + r".*fillna"):
        clf.predict(["good movie", bad, "sport"])


def test_missing_values_of_a_column_are_named_not_read_as_text(clf):
    column = pd.DataFrame({"text": ["good movie", None, "bad", np.nan]})["text"]  # pandas reads None as NaN
    with pytest.raises(UserError, match=r"texts\[1\] is NaN .*, not a string \(and 1 more element\(s\) are not"):
        clf.predict(column)
    with pytest.raises(UserError, match=r"texts\[2\] is None, not a string"):
        clf.predict(pd.Series(["good movie", "bad", None], dtype=object))
    with pytest.raises(UserError, match=r"texts\[0\] is 1.5 \(numpy.float64\), not a string"):
        clf.predict(np.array([1.5, 2.0]))


# -------------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("top_k", [1.5, 0, -1, True, "2", None, 2.0])
def test_a_bad_top_k_is_refused(clf, top_k):
    with pytest.raises(UserError, match=r"top_k is .*: give a whole number of 1 or more"):
        clf.predict(TEXTS, top_k=top_k)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, "8"])
def test_a_bad_batch_size_is_refused(clf, batch_size):
    with pytest.raises(UserError, match=r"batch_size is .*: give a whole number of 1 or more .*or None"):
        clf.predict(TEXTS, batch_size=batch_size)


def test_the_accepted_options_keep_working(clf):
    want = clf.predict(TEXTS, top_k=2)
    assert clf.predict(TEXTS, top_k=np.int64(2)) == want
    assert clf.predict(TEXTS, top_k=2, batch_size=None) == want
    for batch_size in (1, np.int32(2)):
        got = clf.predict(TEXTS, top_k=2, batch_size=batch_size)
        assert [[x["label"] for x in r] for r in got] == [[x["label"] for x in r] for r in want]
        assert [x["score"] for r in got for x in r] == pytest.approx([x["score"] for r in want for x in r], abs=1e-5)
    every = clf.predict(TEXTS, top_k=10)  # more than there are labels: all of them, best first
    assert all(sorted(x["label"] for x in r) == sorted(clf.labels) for r in every)


# ---------------------------------------------------------------------------------------------------- pairs

def test_pairs_of_another_length_are_refused(clf):
    with pytest.raises(UserError, match=r"3 texts but 2 second texts \(pairs=\): give one second text per text"):
        clf.predict(TEXTS, pairs=TEXTS[:2])
    with pytest.raises(UserError, match=r"3 texts but 1 second texts"):
        clf.predict(TEXTS, pairs="the goal")


def test_pairs_elements_are_checked_like_the_texts(clf):
    with pytest.raises(UserError, match=r"pairs\[2\] is None, not a string"):
        clf.predict(TEXTS, pairs=["a", "b", None])
    with pytest.raises(UserError, match=r"pairs is a dict"):
        clf.predict(TEXTS, pairs={"hypothesis": "a"})


# --------------------------------------------------------------------------------------------------- images

@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny ViT classifier folder (random head, two labels) and two small pictures."""
    import torch
    import transformers as T
    from PIL import Image

    base = tmp_path_factory.mktemp("predict-api-images")
    torch.manual_seed(0)
    config = T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, num_labels=2, id2label={0: "blue", 1: "red"},
                         label2id={"blue": 0, "red": 1})
    T.AutoModelForImageClassification.from_config(config).save_pretrained(base / "model")
    T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(base / "model")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        images.append(base / f"picture{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images[-1])
    return base / "model", images


def test_a_lone_image_path_is_one_image(image_run):
    from textxfer.modalities.image.classifier import ImageClassifier

    folder, images = image_run
    clf = textxfer.load(folder)
    assert isinstance(clf, ImageClassifier)
    want = clf.predict([images[0]])
    assert len(want) == 1
    assert clf.predict(str(images[0])) == want
    assert clf.predict(images[0]) == want
    from PIL import Image

    with Image.open(images[0]) as picture:
        assert clf.predict(picture.copy()) == want
    both = clf.predict(images, top_k=2)
    assert clf.predict((str(p) for p in images), top_k=2) == both
    assert clf.predict(pd.Series([str(p) for p in images]), top_k=2) == both
    assert clf.predict([]) == []


def test_missing_and_unreadable_image_files_are_named(image_run, tmp_path):
    folder, images = image_run
    clf = textxfer.load(folder)
    with pytest.raises(UserError, match=r"images\[0\] is /nope\.jpg, which does not exist"):
        clf.predict(["/nope.jpg"])
    with pytest.raises(UserError, match=r"images\[1\] is .*, which is not a file"):
        clf.predict([images[0], tmp_path])
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(UserError, match=r"images\[0\] is .*notes\.jpg, which is not an image"):
        clf.predict([tmp_path / "notes.jpg", images[0]])


def test_what_is_not_an_image_is_refused(image_run):
    folder, images = image_run
    clf = textxfer.load(folder)
    with pytest.raises(UserError, match=r"images\[1\] is None, not an image"):
        clf.predict([images[0], None])
    with pytest.raises(UserError, match=r"images is None"):
        clf.predict(None)
    with pytest.raises(UserError, match=r"images is a dict"):
        clf.predict({"image": str(images[0])})
    with pytest.raises(UserError, match=r"top_k is 0 \(int\): give a whole number of 1 or more"):
        clf.predict(images, top_k=0)
    with pytest.raises(UserError, match=r"batch_size is 0 \(int\): give a whole number"):
        clf.predict(images, batch_size=0)
