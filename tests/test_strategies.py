"""For every strategy and every covered architecture: exactly the intended parameters change in training,
and every frozen one stays bit-identical. Plus layer discovery and ALBERT's shared-layer rule."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, tiny_recipe

from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError
from textxfer.engine.loop import Loop

STRATEGIES = {
    "head": {"strategy__name": "head"},
    "freeze": {"strategy__name": "freeze", "strategy__freeze_layers": 1},
    "lora": {"strategy__name": "lora"},
    "lora-upper": {"strategy__name": "lora", "strategy__lora_layers": 1},
    "full": {"strategy__name": "full"},
}


def run_loop(model_dir, data, out, **over):
    recipe = load_recipe(data=tiny_recipe(model_dir, data, out, training__epochs=1, **over))
    loop = Loop(recipe, out)
    loop.build()
    loop.prepare()
    return loop


def intended(loop, name: str, strategy: str) -> bool:
    """Whether parameter `name` (of the unwrapped, possibly peft model) should train under `strategy`."""
    parts = loop.parts
    if "lora_" in name:
        return True
    clean = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
    if ".original_module." in clean:
        return False
    group = parts.group_of(clean)
    in_base = clean.startswith(loop.acc.unwrap_model(loop.model).base_model_prefix + ".") if strategy not in (
        "lora", "lora-upper") else clean.startswith(loop.model.get_base_model().base_model_prefix + ".")
    if clean in parts.new_params:
        return True
    if strategy == "full":
        return True
    if strategy in ("head", "lora", "lora-upper"):
        return group == "head" and not in_base
    # freeze lower 1 of 2
    if group == "embeddings":
        return False
    if group.startswith("layer."):
        return int(group.split(".")[1]) >= 1
    return True


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("arch", ARCHS)
def test_exactly_intended_parameters_change(arch, strategy, tiny_models, tiny_data, tmp_path):
    """Precision: the suite's; bit-exact in both modes: frozen parameters are never written, whatever precision
    computes the forward, and trained fp32 weights move by an optimizer step."""
    loop = run_loop(tiny_models[arch], tiny_data, tmp_path / "run", **STRATEGIES[strategy])
    model = loop.acc.unwrap_model(loop.model)
    if loop.cache is not None:
        loop.cache.uninstall()  # compare the whole model, frozen modules included
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if loop.cache is not None:
        loop.cache.install()
    loop.fit()
    if loop.cache is not None:
        loop.cache.uninstall()
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    trained_expected = {n for n in before if intended(loop, n, strategy)}
    requires_grad = {n for n, p in after.items() if p.requires_grad}
    assert requires_grad == trained_expected, (
        f"{arch}/{strategy}: unexpected trainable {sorted(requires_grad ^ trained_expected)[:6]}")
    for n in before:
        same = torch.equal(before[n], after[n].detach())
        if n in trained_expected:
            # a trained tensor changes (lora_B starts at zero but moves after a step, too)
            assert not same, f"{arch}/{strategy}: trainable {n} did not change"
        else:
            assert same, f"{arch}/{strategy}: frozen {n} changed"


def test_layer_discovery_matches_expected_names(tiny_models):
    from textxfer.backbones.load import load_classifier

    expected = {
        "bert": ("bert.embeddings", "bert.encoder.layer.1"),
        "distilbert": ("distilbert.embeddings", "distilbert.transformer.layer.1"),
        "roberta": ("roberta.embeddings", "roberta.encoder.layer.1"),
        "xlm-roberta": ("roberta.embeddings", "roberta.encoder.layer.1"),
        "electra": ("electra.embeddings", "electra.encoder.layer.1"),
        "deberta-v2": ("deberta.embeddings", "deberta.encoder.layer.1"),
    }
    for arch, (emb, last) in expected.items():
        _, parts = load_classifier(str(tiny_models[arch]), ["a", "b"])
        assert parts.embeddings[0] == emb
        assert parts.layers[-1] == last and len(parts.layers) == 2
    _, parts = load_classifier(str(tiny_models["electra"]), ["a", "b"])
    assert "electra.embeddings_project" in parts.embeddings
    _, parts = load_classifier(str(tiny_models["deberta-v2"]), ["a", "b"])
    assert "deberta.encoder.rel_embeddings" in parts.embeddings
    _, parts = load_classifier(str(tiny_models["albert"]), ["a", "b"])
    assert parts.shared_layers and len(parts.layers) == 1


def test_new_pooler_is_trained_and_reported(tiny_models, tmp_path):
    """A checkpoint without pooler weights (sentence-transformers style): the pooler is new, so it trains."""
    from safetensors.torch import load_file, save_file

    from textxfer.backbones.load import load_classifier

    folder = tmp_path / "nopooler"
    import shutil

    shutil.copytree(tiny_models["bert"], folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    _, parts = load_classifier(str(folder), ["a", "b"])
    assert {"bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= parts.new_params


def test_albert_partial_freeze_is_refused(tiny_models, tiny_data, tmp_path):
    with pytest.raises(UserError, match="ALBERT shares ONE set"):
        run_loop(tiny_models["albert"], tiny_data, tmp_path / "run", strategy__name="freeze",
                 strategy__freeze_layers=2)


def test_freeze_layers_beyond_depth_is_refused(tiny_models, tiny_data, tmp_path):
    with pytest.raises(UserError, match="only 2 layer groups"):
        run_loop(tiny_models["bert"], tiny_data, tmp_path / "run", strategy__name="freeze",
                 strategy__freeze_layers=5)


def test_lora_targets_that_match_nothing_are_refused(tiny_models, tiny_data, tmp_path):
    with pytest.raises(UserError, match="match no linear layer"):
        run_loop(tiny_models["bert"], tiny_data, tmp_path / "run", strategy__name="lora",
                 strategy__lora={"target_modules": ["no_such_linear"]})


def test_lora_upper_layers_adapt_only_those(tiny_models, tiny_data, tmp_path):
    loop = run_loop(tiny_models["bert"], tiny_data, tmp_path / "run", strategy__name="lora",
                    strategy__lora_layers=1)
    names = [n for n, _ in loop.acc.unwrap_model(loop.model).named_parameters() if "lora_A" in n]
    assert names and all(".layer.1." in n for n in names)
