"""Vision backbones under every strategy: exactly the intended parameters change, frozen ones (and the running
statistics of frozen BatchNorms) stay bit-identical; the frozen-prefix cache reproduces the plain forward.

Tiny random checkpoints of ViT, DeiT, ConvNeXt, ResNet, EfficientNet, MobileNetV2 and Swin, each with its own
family's image processor, built offline. The expected parameter sets are written from the architectures' known
module names here, not read from textxfer's layer discovery, so a wrong discovery fails the test.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from test_vision import ARCHS, EXPECTED, tiny_vision_checkpoint, write_folders

from textxfer.config.reading import load_recipe
from textxfer.engine.loop import Loop

# lora: targets named in backbones.LORA_TARGETS; frozen BN / frozen SE: never change
STRATEGIES = {
    "head": {"name": "head"},
    "freeze": {"name": "freeze", "freeze_layers": 1},
    "lora": {"name": "lora", "lora": {"r": 2, "alpha": 4, "dropout": 0.0}},
    "full": {"name": "full"},
}
LORA_NAMES = {
    "vit": r"(q_proj|k_proj|v_proj|o_proj|fc1|fc2)", "deit": r"(q_proj|k_proj|v_proj|o_proj|fc1|fc2)",
    "swin": r"(q_proj|k_proj|v_proj|o_proj|fc1|fc2)", "convnext": r"(pwconv1|pwconv2)",
    "resnet": r"convolution", "efficientnet": r"(expand_conv|project_conv)",
    "mobilenet_v2": r"(expand_1x1\.convolution|reduce_1x1\.convolution)",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-vision")
    return {a: tiny_vision_checkpoint(a, base / a) for a in ARCHS}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("images"), n_train=4, n_val=2)


def run_loop(ckpt, folders, out, strategy: dict, **training) -> Loop:
    recipe = load_recipe(data={
        "model": {"name": str(ckpt)},
        "data": {"train": str(folders / "train"), "validation": str(folders / "val")},
        "strategy": strategy,
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "seed": 0, "cache": "memory",
                     "threads": 1, "checkpoint_every": None, "warmup_ratio": 0.0, **training},
        "output_dir": str(out),
    })
    loop = Loop(recipe, out)
    loop.build()
    loop.prepare()
    return loop


def intended(arch: str, strategy: str, name: str) -> bool:
    """Whether parameter `name` (plain model names) should change under `strategy`, from the known layout."""
    prefix, stem, layers = EXPECTED[arch]
    if name.startswith("efficientnet.encoder.blocks.0.squeeze_excite."):  # config.textxfer_frozen_modules
        return False
    in_base = name.startswith(prefix + ".")
    if strategy == "full":
        return True
    if strategy == "head":
        return not in_base
    if strategy == "lora":
        layer = re.escape(layers)
        return not in_base or bool(re.match(rf"^{layer}\.\d+\..*\b{LORA_NAMES[arch]}\.weight$", name))
    # freeze: stem and layer 0 frozen; layers 1.. and everything after them (final norm/conv, head) train
    return not (name.startswith(stem + ".") or name.startswith(f"{layers}.0."))


def frozen_norm_buffers(model, trainable: set[str]) -> list[str]:
    """Running statistics of BatchNorms whose weights do not train: they must not move either."""
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and f"{mname}.weight" not in trainable:
            out += [f"{mname}.running_mean", f"{mname}.running_var"]
    return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("arch", ARCHS)
def test_exactly_intended_parameters_change(arch, strategy, checkpoints, folders, tmp_path):
    """Precision: the suite's; bit-exact in both modes: frozen parameters and BatchNorm statistics are never
    written, whatever precision computes the forward, and trained fp32 weights move by an optimizer step."""
    loop = run_loop(checkpoints[arch], folders, tmp_path / "run", STRATEGIES[strategy])
    model = loop.acc.unwrap_model(loop.model)
    if loop.cache is not None:
        loop.cache.uninstall()  # the whole model, frozen modules included
    plain = copy.deepcopy(model).merge_and_unload() if loop.applied.is_peft else model  # what would be saved
    before = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    trainable = {n.replace("base_model.model.", "") for n, p in model.named_parameters() if p.requires_grad}
    if loop.cache is not None:
        loop.cache.install()
    loop.fit()
    if loop.cache is not None:
        loop.cache.uninstall()
    if loop.applied.is_peft:  # what is saved: the merged model
        after_model = copy.deepcopy(model).merge_and_unload()
        assert any("lora_" in n for n in trainable)
    else:
        after_model = model
    after = after_model.state_dict()
    params = {n for n, _ in after_model.named_parameters()}
    assert before.keys() == after.keys()
    expected = {n for n in params if intended(arch, strategy, n)}
    changed = {n for n in params if not torch.equal(before[n], after[n])}
    assert changed == expected, (f"{arch}/{strategy}: changed but frozen {sorted(changed - expected)[:4]}, "
                                 f"trained but unchanged {sorted(expected - changed)[:4]}")
    if not loop.applied.is_peft:
        assert trainable == expected
    for buf in frozen_norm_buffers(after_model, expected):
        assert torch.equal(before[buf], after[buf]), f"{arch}/{strategy}: frozen BatchNorm statistics {buf} moved"
    if strategy in ("head", "freeze", "lora"):
        assert loop.cache is not None, f"{arch}/{strategy}: the frozen-prefix cache was not used"


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_forward_equals_plain_forward(arch, checkpoints, folders, tmp_path):
    """With the lower stages cached, the model computes the same logits as without (eval mode), at every depth.

    Precision: fp32, exact to 1e-5, whatever `auto` resolves to: the model is taken without Accelerate's autocast
    wrapper. (Under bf16 the cached and plain forwards round differently; runs in bf16 are covered by the strategy
    tests above, which train with the cache at the suite's precision.)"""
    from textxfer.modalities.image.cache import VisionPrefixCache

    loop = run_loop(checkpoints[arch], folders, tmp_path / "run", {"name": "full"}, cache="off")
    model = loop.acc.unwrap_model(loop.model, keep_fp32_wrapper=False).eval().cpu()  # compared on the CPU
    split = loop.encoded["train"]
    pixels = loop.transforms.eval([split.load(i) for i in range(len(split))])
    with torch.inference_mode():
        plain = model(pixel_values=pixels).logits
    for k in sorted({0, 1, len(loop.parts.layers)}):
        cache = VisionPrefixCache(model, loop.parts, k)
        assert cache.verify(pixels, torch.device("cpu")) is None
        feats = cache.load_or_compute("unused", lambda: iter([(list(range(len(pixels))), {"pixel_values": pixels})]),
                                      torch.device("cpu"), use_disk=False)
        cache.install()
        try:
            cache.slot.current = torch.stack(feats)
            with torch.inference_mode():
                cached = model(pixel_values=pixels[:, :, :1, :1]).logits
        finally:
            cache.uninstall()
        np.testing.assert_allclose(cached.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{arch} k={k}")


def test_lora_on_upper_stages_only(checkpoints, folders, tmp_path):
    loop = run_loop(checkpoints["resnet"], folders, tmp_path / "run", {"name": "lora", "lora_layers": 1})
    names = [n for n, p in loop.model.named_parameters() if "lora_" in n]
    assert names and all(".stages.1." in n for n in names)
    assert loop.cache is not None and loop.applied.frozen_prefix == 1
