"""Models are loaded without transformers' Hub kernels: on a GPU, transformers 5 otherwise swaps layers for code it
downloads from the Hub when a model enters train or eval mode (a crash offline, code fetched at run time, and
numbers unlike the CPU's). These tests check the switch on every path that loads weights, on any machine."""

from __future__ import annotations

from textxfer.backbones.load import load_classifier
from textxfer.modalities.text.predict import Classifier


def test_training_and_prediction_load_models_without_hub_kernels(tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    assert model.use_kernels is False
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(tmp_path / "model")
    assert Classifier(tmp_path / "model", device="cpu").model.use_kernels is False
    # what transformers does when not told: the reason for the switch (if this changes, the switch may go)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").use_kernels is True
