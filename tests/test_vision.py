"""Images in, a model plain transformers loads out: image folders, CSV/JSONL path columns, Hub image datasets,
scikit-learn's digits; bad files named by path; palette/alpha/grayscale pictures; augmentation; the run
directory, `pipeline("image-classification")` agreeing with `textxfer predict`.

All images are written by the tests; models are tiny random checkpoints (see `tiny_vision_checkpoint`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from textxfer.config.reading import load_recipe
from textxfer.core.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARCHS = ["vit", "deit", "convnext", "resnet", "efficientnet", "mobilenet_v2", "swin"]
# base-model prefix, stem, ordered layer list: the names transformers 5 uses (see DESIGN.md)
EXPECTED = {
    "vit": ("vit", "vit.embeddings", "vit.layers"),
    "deit": ("deit", "deit.embeddings", "deit.layers"),
    "convnext": ("convnext", "convnext.embeddings", "convnext.encoder.stages"),
    "resnet": ("resnet", "resnet.embedder", "resnet.encoder.stages"),
    "efficientnet": ("efficientnet", "efficientnet.embeddings", "efficientnet.encoder.blocks"),
    "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2.conv_stem", "mobilenet_v2.layer"),
    "swin": ("swin", "swin.embeddings", "swin.encoder.layers"),
}
COLOURS = {"blue": (30, 40, 210), "red": (210, 40, 30)}


def tiny_vision_config(arch: str):
    import transformers as T

    if arch == "vit":
        return T.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37)
    if arch == "deit":
        return T.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37)
    if arch == "convnext":
        return T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
    if arch == "resnet":
        return T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    if arch == "efficientnet":  # like the converted Lite: block 0's squeeze-excite must never train
        return T.EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
                                    textxfer_frozen_modules=["efficientnet.encoder.blocks.0.squeeze_excite"])
    if arch == "mobilenet_v2":
        return T.MobileNetV2Config(image_size=32, depth_multiplier=0.1)
    if arch == "swin":
        return T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4)
    raise ValueError(arch)


def tiny_processor(arch: str):
    """Each family's own processor class and size convention (fixed size, shortest edge + crop, crop_pct)."""
    import transformers as T

    if arch in ("convnext", "resnet"):
        return T.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)
    if arch == "efficientnet":
        return T.EfficientNetImageProcessorPil(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    if arch == "mobilenet_v2":
        return T.MobileNetV2ImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    return T.ViTImageProcessorPil(size={"height": 32, "width": 32})


def tiny_vision_checkpoint(arch: str, folder: Path) -> Path:
    """A tiny random base model (no classifier, like an ImageNet backbone) and its image processor."""
    from transformers import AutoModel

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_config(tiny_vision_config(arch))
    calibrate_like_a_trained_cnn(model)
    model.save_pretrained(folder)
    tiny_processor(arch).save_pretrained(folder)
    return folder


def calibrate_like_a_trained_cnn(model) -> None:
    """PyTorch's default conv init and BatchNorm statistics of real activations (4 batches of random pictures), as
    in a trained CNN; nothing for a model without BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.modules.batchnorm._BatchNorm)):
            m.reset_parameters()
    for m in norms:
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(pixel_values=torch.randn(8, 3, 32, 32))
    for m in norms:
        m.momentum = 0.1


def colour_image(colour: str, rng: np.random.Generator, size=(40, 48)) -> Image.Image:
    pixels = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 25, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_folders(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """root/{train,val}/{blue,red}/*.png: a task any backbone learns in a few steps."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for colour in COLOURS:
            (root / split / colour).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour_image(colour, rng).save(root / split / colour / f"{colour}{i}.png")
    return root


def config(**data):
    return load_recipe(data={"model": {"name": "x"}, "data": data}).data


def splits_of(**data):
    from textxfer.modalities.image.splits import load_image_splits

    return load_image_splits(config(**data), seed=0)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return tiny_vision_checkpoint("vit", tmp_path_factory.mktemp("vit") / "vit")


@pytest.fixture
def folders(tmp_path) -> Path:
    return write_folders(tmp_path / "images")


# --------------------------------------------------------------------------------------------- reading data

def test_folders_give_sorted_labels_and_every_image(folders):
    splits, images = splits_of(train=str(folders / "train"), validation=str(folders / "val"))
    assert splits.labels == ["blue", "red"]
    assert len(images["train"]) == 16 and len(images["validation"]) == 8
    assert sorted(np.bincount(images["train"].targets).tolist()) == [8, 8]
    assert splits.train.column_names == ["image", "label"]
    assert all(Path(n).is_file() for n in splits.validation["image"])


def test_validation_carved_from_train_when_absent(folders):
    splits, images = splits_of(train=str(folders / "train"), validation_split=0.25)
    assert len(images["validation"]) == 4 and len(images["train"]) == 12
    assert set(images["validation"].targets.tolist()) == {0, 1}
    assert not set(images["validation"].names) & set(images["train"].names)


def test_every_pixel_format_is_read_as_rgb(tmp_path):
    from transformers import ViTImageProcessorPil

    from textxfer.modalities.image.transforms import ImageTransforms

    root = tmp_path / "modes"
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
    base = colour_image("red", rng)
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "train/a/palette.png")
    transparent = base.convert("P", palette=Image.Palette.ADAPTIVE)
    transparent.info["transparency"] = 0
    transparent.save(root / "train/a/palette_transparent.png", transparency=0)
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "train/a/anim.gif")
    rgba = base.copy()
    rgba.putalpha(Image.new("L", base.size, 90))
    rgba.save(root / "train/b/alpha.png")
    base.convert("LA").save(root / "train/b/gray_alpha.png")
    base.convert("L").save(root / "train/b/gray.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(root / "train/b/gray16.png")
    base.convert("CMYK").save(root / "val/a/cmyk.jpg")
    base.convert("1").save(root / "val/b/bilevel.bmp")
    _, images = splits_of(train=str(root / "train"), validation=str(root / "val"))
    assert len(images["train"]) == 7 and len(images["validation"]) == 2
    transforms = ImageTransforms(ViTImageProcessorPil(size={"height": 32, "width": 32}))
    for split in images.values():
        for i in range(len(split)):
            image = split.load(i)
            assert image.mode == "RGB" and image.size == (48, 40), split.names[i]
        pixels = transforms.eval([split.load(i) for i in range(len(split))])
        assert pixels.shape == (len(split), 3, 32, 32) and torch.isfinite(pixels).all()


def test_rgb_conversion_matches_transformers_load_image(tmp_path):
    """Training reads pictures exactly as pipeline() will at inference (transformers.image_utils.load_image)."""
    from transformers.image_utils import load_image

    from textxfer.modalities.image.files import open_image

    rng = np.random.default_rng(2)
    rgba = colour_image("blue", rng)
    rgba.putalpha(Image.new("L", rgba.size, 30))
    paths = {"rgba.png": rgba, "gray.png": rgba.convert("L"), "pal.gif": rgba.convert("RGB").convert("P")}
    for name, image in paths.items():
        image.save(tmp_path / name)
        assert np.array_equal(np.asarray(open_image(tmp_path / name)), np.asarray(load_image(str(tmp_path / name))))


def test_corrupt_and_truncated_jpegs_are_named(folders):
    good = (folders / "train/red/red0.png").read_bytes()
    jpeg = folders / "train/red/truncated.jpg"
    colour_image("red", np.random.default_rng(3), size=(120, 160)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (folders / "train/blue/garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (folders / "train/blue/notes.txt").write_text("not a picture\n")
    (folders / "train/blue/empty.png").write_bytes(b"")
    assert good
    with pytest.raises(UserError) as e:
        splits_of(train=str(folders / "train"), validation=str(folders / "val"))
    msg = str(e.value)
    for name in ("truncated.jpg", "garbage.jpg", "empty.png"):
        assert name in msg
    assert "3 bad image file(s)" in msg and "skip_bad_images" in msg and "notes.txt" not in msg


def test_files_that_are_not_images_by_name_are_left_out_and_said(folders, caplog):
    """A README.txt or Thumbs.db in a class folder is not an example (as `predict` reads a folder)."""
    (folders / "train/blue/README.txt").write_text("about these pictures\n")
    (folders / "train/red/Thumbs.db").write_bytes(os.urandom(64))
    with caplog.at_level("WARNING", logger="textxfer"):
        _, images = splits_of(train=str(folders / "train"), validation=str(folders / "val"))
    assert len(images["train"]) == 16
    assert "2 file(s) in the class folders are not images by their names and are left out" in caplog.text


def test_skip_bad_images_leaves_them_out_and_says_so(folders):
    (folders / "train/blue/garbage.jpg").write_bytes(b"GIF89a" + os.urandom(50))
    splits, images = splits_of(train=str(folders / "train"), validation=str(folders / "val"), skip_bad_images=True)
    assert len(images["train"]) == 16
    assert not any("garbage" in n for n in images["train"].names)
    assert any("garbage.jpg" in n and "skipped 1" in n for n in splits.notes)


def test_a_gif_placeholder_is_an_image_and_exclude_images_drops_it(folders):
    colour_image("blue", np.random.default_rng(4)).convert("P").save(folders / "train/red/imageNotFound.gif")
    _, images = splits_of(train=str(folders / "train"), validation=str(folders / "val"))
    assert any(n.endswith("imageNotFound.gif") for n in images["train"].names)  # readable: kept unless excluded
    splits, images = splits_of(train=str(folders / "train"), validation=str(folders / "val"),
                               exclude_images=["red/imageNotFound.gif", "nothing-*.png"])
    assert not any(n.endswith("imageNotFound.gif") for n in images["train"].names)
    assert any("left out 1 file" in n for n in splits.notes)
    assert any("nothing-*.png" in n and "matches nothing" in n for n in splits.notes)


def test_empty_class_folder_is_named(folders):
    (folders / "train/green").mkdir()
    with pytest.raises(UserError, match=r"train/green holds no images"):
        splits_of(train=str(folders / "train"), validation=str(folders / "val"))


def test_validation_class_missing_from_train_is_named(folders):
    (folders / "val/green").mkdir()
    colour_image("red", np.random.default_rng(5)).save(folders / "val/green/g.png")
    with pytest.raises(UserError) as e:
        splits_of(train=str(folders / "train"), validation=str(folders / "val"))
    assert str(folders / "val/green") in str(e.value) and "never sees" in str(e.value)


def test_folder_without_class_folders_is_refused(tmp_path):
    colour_image("red", np.random.default_rng(6)).save(tmp_path / "lonely.png")
    with pytest.raises(UserError, match="no class folders"):
        splits_of(train=str(tmp_path))


def test_csv_and_jsonl_paths_are_relative_to_the_file(folders):
    csv = folders / "lists" / "train.csv"
    csv.parent.mkdir()
    rows = ["file,kind"] + [f"../train/{c}/{c}{i}.png,{c}" for c in COLOURS for i in range(8)]
    csv.write_text("\n".join(rows) + "\n")
    jsonl = folders / "lists" / "val.jsonl"
    jsonl.write_text("".join(json.dumps({"file": str(folders / f"val/{c}/{c}{i}.png"), "kind": c}) + "\n"
                             for c in COLOURS for i in range(4)))
    splits, images = splits_of(train=str(csv), validation=str(jsonl), image_column="file", label_column="kind")
    assert splits.labels == ["blue", "red"] and len(images["train"]) == 16 and len(images["validation"]) == 8
    assert images["train"].load(0).mode == "RGB"


def test_missing_file_in_the_path_column_is_named_with_its_row(folders):
    csv = folders / "train.csv"
    csv.write_text("image,label\ntrain/red/red0.png,red\ntrain/red/gone.png,red\ntrain/blue/blue0.png,blue\n")
    with pytest.raises(UserError) as e:
        splits_of(train=str(csv), validation=str(folders / "val"))
    assert "row 2 (train/red/gone.png) does not exist" in str(e.value)
    with pytest.raises(UserError, match="no column `path`"):
        splits_of(train=str(csv), image_column="path")


def test_image_lists_are_read_by_the_text_tables_readers(folders):
    """One reader layer: an image list is read as a text table is (a `;` delimiter sniffed, a Latin-1 file read,
    empty cells named by file and row)."""
    semi = folders / "semi.csv"
    semi.write_bytes(("image;label\n" + "".join(f"train/{c}/{c}{i}.png;{c}\n" for c in COLOURS for i in range(8))
                      + "train/red/red0.png;r\xe9d\n").encode("latin-1"))
    splits, images = splits_of(train=str(semi), validation=str(folders / "val"),
                               labels={"red": "red", "blue": "blue", "r\xe9d": "red"})
    assert len(images["train"]) == 17 and splits.labels == ["red", "blue"]
    empty = folders / "empty_label.csv"
    empty.write_text("image,label\ntrain/red/red0.png,red\ntrain/blue/blue0.png,\n")
    with pytest.raises(UserError, match=r"empty_label.csv, row 2: the label \(column `label`\) is empty"):
        splits_of(train=str(empty), validation=str(folders / "val"))


def test_hub_image_dataset(monkeypatch, folders):
    """`hub:<id>` reads an Image column and ClassLabel names (load_dataset itself is datasets' business)."""
    import datasets

    paths = sorted((folders / "train").rglob("*.png"))
    ds = datasets.Dataset.from_dict(
        {"img": [str(p) for p in paths], "y": [0 if "blue" in p.name else 1 for p in paths]},
        features=datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["blue", "red"])}))
    seen = {}

    def fake_load(repo, name=None, split=None, revision=None):
        seen[split] = repo
        return ds
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    splits, images = splits_of(train="hub:someone/colours", validation="hub:someone/colours:test",
                               image_column="img", label_column="y")
    assert seen == {"train": "someone/colours", "test": "someone/colours"}
    assert splits.labels == ["blue", "red"] and len(images["train"]) == 16
    assert images["validation"].names[0] == "hub:someone/colours:test#0"
    assert images["train"].load(3).mode == "RGB"


def test_sklearn_digits_as_images():
    splits, images = splits_of(train="sklearn:digits", validation_split=0.2, test_split=0.1)
    assert splits.labels == [str(i) for i in range(10)]
    assert sum(len(s) for s in images.values()) == 1797
    image = images["test"].load(0)
    assert image.mode == "RGB" and image.size == (8, 8)


# --------------------------------------------------------------------------------------------- transforms

def test_random_resized_crop_is_seeded_and_sized():
    from textxfer.modalities.image.transforms import random_resized_crop

    image = colour_image("red", np.random.default_rng(7), size=(60, 90))
    a = random_resized_crop(image, (32, 24), np.random.default_rng([0, 1, 2]), Image.Resampling.BILINEAR)
    b = random_resized_crop(image, (32, 24), np.random.default_rng([0, 1, 2]), Image.Resampling.BILINEAR)
    c = random_resized_crop(image, (32, 24), np.random.default_rng([0, 2, 2]), Image.Resampling.BILINEAR)
    assert a.size == (24, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_training_transform_uses_the_processors_size_and_statistics():
    """Pixel arithmetic in fp32 (no model): torch's default fp32 tolerance."""
    from transformers import ConvNextImageProcessorPil

    from textxfer.modalities.image.transforms import ImageTransforms

    processor = ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.2, 0.4, 0.6],
                                          image_std=[0.5, 0.25, 0.125])
    t = ImageTransforms(processor)
    assert t.size == (32, 32)
    flat = Image.new("RGB", (50, 70), (100, 150, 200))
    train = t.train([flat], [np.random.default_rng(0)])
    evaluated = t.eval([flat])
    assert train.shape == evaluated.shape == (1, 3, 32, 32)
    torch.testing.assert_close(train, evaluated)  # a flat picture: any crop or flip gives the same pixels


def test_augmentation_changes_per_epoch_and_repeats_per_seed(folders, vit, tmp_path):
    """Pixel tensors, bit-exact: collation runs no model, so no precision setting enters."""
    from textxfer.engine.loop import Loop

    loop = Loop(load_recipe(data=recipe(vit, folders, tmp_path / "run", data={"augment": True})), tmp_path / "run")
    loop.build()
    assert loop.modality.augment and loop.cache is None
    plan, dl = loop.loader("train", True, 4)
    plan.set_epoch(0)
    first = dl.collate_fn([0, 1])["pixel_values"]
    again = dl.collate_fn([0, 1])["pixel_values"]
    plan.set_epoch(1)
    other = dl.collate_fn([0, 1])["pixel_values"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    _, eval_dl = loop.loader("validation", False, 4)
    assert torch.equal(eval_dl.collate_fn([0])["pixel_values"],
                       loop.transforms.eval([loop.encoded["validation"].load(0)]))


# --------------------------------------------------------------------------------------------- runs

def recipe(model: Path, folders: Path, out: Path, strategy: str = "head", data: dict | None = None, **training):
    return {
        "model": {"name": str(model)},
        "data": {"train": str(folders / "train"), "validation": str(folders / "val"), **(data or {})},
        "strategy": {"name": strategy},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 5e-2, "seed": 0, "cache": "memory",
                     "threads": 1, "checkpoint_every": None, **training},
        "output_dir": str(out),
    }


def test_task_is_detected_from_the_checkpoint(vit, tiny_models):
    from textxfer.modalities.detect import task_of

    assert task_of(load_recipe(data={"model": {"name": str(vit)}, "data": {"train": "x"}})) == "image"
    assert task_of(load_recipe(data={"model": {"name": str(tiny_models["bert"])}, "data": {"train": "x"}})) == "text"
    assert task_of(load_recipe(data={"model": {"name": "convert:efficientnet-lite0"}, "data": {"train": "x"}})) \
        == "image"


def test_run_directory_pipeline_and_predict_agree(vit, folders, tmp_path):
    """Precision: the suite's for training; the comparisons are fp32 against fp32 in both modes: the run's accuracy
    and predictions come from its final fp32 evaluation, `textxfer predict` and pipeline() load the saved model in
    fp32 (scores to rtol 1e-5: batching changes fp32's summation order only)."""
    from transformers import pipeline

    from textxfer.cli.main import cli
    from textxfer.tools.train import train

    out = tmp_path / "run"
    result = train(recipe(vit, folders, out))
    assert result.metrics["validation"]["accuracy"] == 1.0
    model_dir = out / "model"
    assert (model_dir / "preprocessor_config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "tokenizer_config.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "image" and run["labels"] == ["blue", "red"]
    rows = [json.loads(line) for line in (out / "predictions/validation.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(Path(r["image"]).is_file() and r["label"] == r["pred"] for r in rows)

    pipe = pipeline("image-classification", model=str(model_dir))
    images = sorted(str(p) for p in (folders / "val").rglob("*.png"))
    plain = [p[0] for p in pipe(images, top_k=1)]
    cli_out = CliRunner().invoke(cli, ["predict", str(out), "--input", str(folders / "val")])
    assert cli_out.exit_code == 0, cli_out.output
    said = [json.loads(line) for line in cli_out.stdout.splitlines()]
    assert [r["image"] for r in said] == images
    assert [r["label"] for r in said] == [p["label"] for p in plain]
    np.testing.assert_allclose([r["score"] for r in said], [p["score"] for p in plain], rtol=1e-5, atol=1e-6)
    one = CliRunner().invoke(cli, ["predict", str(out), "--input", images[0], "--top-k", "2"])
    assert one.exit_code == 0 and json.loads(one.stdout)["labels"] == [r["label"] for r in pipe(images[0])][:2]


def test_predict_names_a_bad_image(vit, folders, tmp_path):
    from textxfer.cli.main import cli
    from textxfer.tools.train import train

    out = tmp_path / "run"
    train(recipe(vit, folders, out, epochs=1))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 20)
    result = CliRunner().invoke(cli, ["predict", str(out), "--input", str(bad)])
    assert result.exit_code == 2 and "bad.jpg" in result.output


def test_cache_serves_head_training_and_augmentation_turns_it_off(vit, folders, tmp_path):
    from textxfer.tools.train import train

    cached = train(recipe(vit, folders, tmp_path / "cached"))
    log = (tmp_path / "cached/train.log").read_text()
    assert "computed once for 24 images" in log and "augmentation off" in log
    augmented = train(recipe(vit, folders, tmp_path / "aug", data={"augment": True}))
    log = (tmp_path / "aug/train.log").read_text()
    assert "cache: not used (data.augment is true" in log and "augmentation on" in log
    assert cached.metrics["validation"]["accuracy"] == augmented.metrics["validation"]["accuracy"] == 1.0


def test_unsupported_options_for_images_are_refused(vit, folders, tmp_path):
    from textxfer.tools.train import train

    with pytest.raises(UserError, match="Multi-label image"):
        train(recipe(vit, folders, tmp_path / "r1", data={"multi_label": True}))
    with pytest.raises(UserError, match="model.pooling"):
        train({**recipe(vit, folders, tmp_path / "r2"), "model": {"name": str(vit), "pooling": "mean"}})
    with pytest.raises(UserError, match="`data.dedupe` apply to text data only"):
        train(recipe(vit, folders, tmp_path / "r3", data={"dedupe": True}))


@pytest.mark.slow
def test_converted_checkpoint_reference_is_converted_once(tmp_path, monkeypatch):
    from textxfer.backbones.load import resolve_model_name

    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path))
    first = Path(resolve_model_name("convert:efficientnet-lite0"))
    assert (first / "config.json").is_file() and (first / "preprocessor_config.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_name("convert:efficientnet-lite0")) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="efficientnet-lite0"):
        resolve_model_name("convert:efficientnet-b9")


def test_image_size_resizes_the_processor_and_the_saved_one(folders, tmp_path):
    from transformers import AutoImageProcessor

    from textxfer.modalities.image.transforms import output_size
    from textxfer.tools.train import train

    resnet = tiny_vision_checkpoint("resnet", tmp_path / "resnet")
    spec = recipe(resnet, folders, tmp_path / "run", epochs=1)
    spec["model"]["image_size"] = 24
    train(spec)
    saved = AutoImageProcessor.from_pretrained(tmp_path / "run/model")
    assert output_size(saved) == (24, 24)
    assert "images: 24x24" in (tmp_path / "run/train.log").read_text()


def test_image_size_a_vit_cannot_take_is_refused(vit, folders, tmp_path):
    from textxfer.tools.train import train

    spec = recipe(vit, folders, tmp_path / "run")
    spec["model"]["image_size"] = 48
    with pytest.raises(UserError, match="`model.image_size` 48 does not fit"):
        train(spec)


def test_evaluate_images_scores_a_folder_and_refuses_unknown_classes(vit, folders, tmp_path):
    from textxfer.tools.evaluate import evaluate_images
    from textxfer.tools.train import train

    out = tmp_path / "run"
    train(recipe(vit, folders, out))
    metrics, per_class = evaluate_images(out, str(folders / "val"))
    assert metrics["accuracy"] == 1.0 and set(per_class) == {"blue", "red"}
    (folders / "val/green").mkdir()
    colour_image("red", np.random.default_rng(8)).save(folders / "val/green/g.png")
    with pytest.raises(UserError, match="green are not among the model's labels"):
        evaluate_images(out, str(folders / "val"))


def test_lora_adapter_reloads_and_matches_the_merged_model(folders, tmp_path):
    """A conv LoRA (ResNet): the saved adapter (with its trained head) on the base checkpoint gives the merged
    model's logits, and both folders carry the image processor.

    Precision: the suite's for training; the logits compared are fp32 in both modes (both models loaded and run
    outside the training loop): merging B @ A into the weights changes fp32's rounding only (rtol 1e-4)."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from textxfer.modalities.image.classifier import ImageClassifier
    from textxfer.tools.train import train

    resnet = tiny_vision_checkpoint("resnet", tmp_path / "resnet")
    spec = recipe(resnet, folders, tmp_path / "run", strategy="lora", epochs=2)
    spec["save_adapter"] = True
    train(spec)
    adapter = tmp_path / "run/adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "preprocessor_config.json").is_file()
    merged = ImageClassifier(tmp_path / "run")
    base = AutoModelForImageClassification.from_pretrained(
        resnet, num_labels=2, id2label={0: "blue", 1: "red"}, label2id={"blue": 0, "red": 1})
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    images = sorted((folders / "val").rglob("*.png"))
    pixels = merged.processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.inference_mode():  # the predictor takes a GPU where there is one; the reference stays on the CPU
        a = merged.model(**{k: v.to(merged.device) for k, v in pixels.items()}).logits.cpu()
        b = unmerged(**pixels).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_resume_refuses_changed_image_bytes(vit, folders, tmp_path):
    """The data check of a resume hashes the images themselves, as run.json does: a training image rewritten in
    place under the same name is changed data, not the same run."""
    from textxfer.tools.train import train

    out = tmp_path / "run"
    train(recipe(vit, folders, out, epochs=2, checkpoint_every=1, keep_checkpoints=5))
    ckpt = sorted((out / "checkpoints").glob("step-*"))[0]
    (out / "run.json").unlink()  # the run as if it had been killed after that checkpoint
    colour_image("red", np.random.default_rng(99)).save(folders / "train" / "blue" / "blue0.png")
    with pytest.raises(UserError, match="differ"):
        train(recipe(vit, folders, out, epochs=2, checkpoint_every=1, keep_checkpoints=5), resume=ckpt)


def test_an_image_few_shot_draw_refuses_a_short_class_as_the_text_one_does(folders):
    """One per-class draw for text and images (`textxfer.data.sampling.per_class_subset`): a class with fewer
    images than `data.examples_per_class`, or none at all (a Hub dataset's named class without training rows,
    which the image draw used to skip silently), is refused, naming it."""
    for f in (folders / "train" / "red").glob("*.png"):
        f.unlink()
    (folders / "train" / "red" / "red0.png").write_bytes((folders / "val" / "red" / "red0.png").read_bytes())
    with pytest.raises(UserError, match=r"examples_per_class` is 2, but some classes have fewer training images: "
                                        r"'red' has 1"):
        splits_of(train=str(folders / "train"), validation=str(folders / "val"), examples_per_class=2)
    splits, _ = splits_of(train=str(folders / "train"), validation=str(folders / "val"), examples_per_class=1)
    assert len(splits.train) == 2


def test_textxfer_load_returns_the_image_classifier_for_an_image_run(vit, folders, tmp_path):
    """One loader for every saved model: `textxfer.load` tells an image run from a text one."""
    import textxfer
    from textxfer.modalities.image.classifier import ImageClassifier
    from textxfer.tools.train import train

    out = tmp_path / "run"
    train(recipe(vit, folders, out, epochs=1))
    clf = textxfer.load(out)
    assert isinstance(clf, ImageClassifier)
    assert clf.predict([folders / "val" / "red" / "red0.png"])[0][0]["label"] in ("blue", "red")
