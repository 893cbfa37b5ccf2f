"""Strategies are a registry: every module in textxfer/strategies/methods registers one, by name; a new one is a
module (here: a class in the test) and nothing else."""

from __future__ import annotations

import pytest
from conftest import tiny_recipe

from textxfer.backbones.load import load_classifier
from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError
from textxfer.strategies import base
from textxfer.strategies.apply import apply_strategy


def test_the_built_in_strategies_are_registered():
    assert base.strategy_names() == ["freeze", "full", "gradual", "head", "lora"]


def test_an_unknown_strategy_names_the_registered_ones_and_the_closest():
    with pytest.raises(UserError, match=r"`strategy.name` is 'lroa'; allowed values: .*'lora'.* Did you mean 'lora'"):
        base.get_strategy("lroa")


def test_a_new_strategy_is_one_registered_class(tiny_models, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "REGISTRY", dict(base.REGISTRY) or {})
    base.strategy_names()  # the built-in ones first

    @base.register
    class TopOnly(base.Strategy):
        """Only the top layer group and the new classifier train."""

        name = "top-only"
        trains_pretrained_head = False

        def frozen_layers(self, cfg, parts):
            return len(parts.layers) - 1

    recipe = load_recipe(data=tiny_recipe(tiny_models["bert"], tiny_data, tmp_path, strategy__name="top-only"))
    model, parts = load_classifier(recipe.model.name, ["a", "b"])
    applied = apply_strategy(model, parts, recipe.strategy)
    trained = {n for n, p in applied.model.named_parameters() if p.requires_grad}
    top = parts.layers[-1]
    assert trained and all(n.startswith(top) or parts.group_of(n) == "head" for n in trained)
    assert any(n.startswith(top) for n in trained) and applied.frozen_prefix == len(parts.layers) - 1
