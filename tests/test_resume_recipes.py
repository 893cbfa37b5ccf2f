"""Resume works on every bundled recipe: a short run of each recipe in recipes/*.yaml, killed with SIGKILL after a
checkpoint and continued with `textxfer train ... --resume`, ends exactly as the uninterrupted run (metrics.json,
history.json, and every tensor of the saved model, bit for bit, at the recipe's own `mixed_precision: auto`, which
is bf16 on a CPU with AMX/AVX512-BF16).

Each recipe runs as written except, through `--set`: a tiny random checkpoint of the same kind (a 6-layer BERT for
text, a 16-block EfficientNet for images, so the recipes' `freeze_layers` keep their meaning), 32 tokens or 32x32
pictures, 24 training examples (8 per class for few-shot recipes), 2 epochs, batches of 8, a checkpoint every 2
steps; recipes that carve validation/test from installed data carve 2%. Recipes reading `${TEXTXFER_DATA}` get
seeded slices of the real files, written to a temporary folder that TEXTXFER_DATA then points at, so the recipes'
paths, formats and columns are used unchanged: those cases are `slow` and skip where the real data is absent.
The default run keeps the recipes on installed data (quickstart: package corpus, digits: scikit-learn) and
sst2.yaml on synthesized SST-2-shaped files (its `labels: {0: negative, 1: positive}` is what a resume once failed
on: the checkpoint's JSON gives the keys back as strings). About 5 s a recipe on 2 idle cores.

Contrastive recipes (`training.contrastive`): checkpoints are written by the classifier phase only, and the stage
runs again on resume (seeded, so identically: the final model's body tensors are compared too). The kill here is
in the classifier phase; a kill during the stage leaves nothing to resume.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA, VOCAB, tiny_config

from textxfer.config.diff import recipe_diff
from textxfer.config.reading import load_recipe, load_yaml
from textxfer.config.schema import to_dict
from textxfer.core.errors import UserError
from textxfer.engine import checkpoint, resuming

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RECIPE_FILES = sorted(p.name for p in RECIPES.glob("*.yaml"))
# the bundled recipes when this test was written: a glob that finds fewer is a broken parametrization
KNOWN = {"agnews.yaml", "banking77.yaml", "digits-efficientnet.yaml", "emotion.yaml", "fewshot.yaml",
         "goemotions.yaml", "hymenoptera-efficientnet.yaml", "quickstart.yaml", "sms-spam.yaml", "sst2.yaml",
         "trec.yaml"}
DATA_VAR = "${TEXTXFER_DATA}"

# `textxfer train` that pauses inside the last odd-numbered optimizer step (so the newest checkpoint, every 2
# steps, is the step before it and the finished step is lost), announces it in READY, and waits to be killed.
PAUSING_CHILD = """
import os, sys, time
import textxfer.engine.loop as tr
step = tr.Loop.train_step
def train_step(self, indices):
    target = self.total_steps - 1 if (self.total_steps - 1) % 2 else self.total_steps - 2
    if self.state.progress.step == target:
        with open(os.environ["READY"], "w") as f:
            f.write(f"{target} {self.total_steps}")
        time.sleep(600)
    return step(self, indices)
tr.Loop.train_step = train_step
from textxfer.cli.main import main
sys.argv = ["textxfer"] + sys.argv[1:]
main()
"""


def raw_recipe(name: str) -> dict:
    return load_yaml((RECIPES / name).read_text(encoding="utf-8"))


def data_refs(raw: dict) -> list[tuple[str, str]]:
    """(data key, path below TEXTXFER_DATA) of every recipe value that reads `${TEXTXFER_DATA}`."""
    found = []

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and DATA_VAR in value:
            found.append((key, value.split(DATA_VAR, 1)[1].lstrip("/")))

    walk(raw, "")
    return found


def is_image(raw: dict) -> bool:
    model = raw.get("model") or {}
    return model.get("task") == "image" or str(model.get("name", "")).startswith("convert:")


def needs_shared_data(name: str) -> bool:
    return bool(data_refs(raw_recipe(name)))


def cases():
    out = []
    for name in RECIPE_FILES:
        slow = needs_shared_data(name) and name not in SYNTHESIZED
        out.append(pytest.param(name, id=name.removesuffix(".yaml"), marks=[pytest.mark.slow] if slow else []))
    return out


# ------------------------------------------------------------------------------------------------ tiny models

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("resume-recipe-models")
    return {"text": tiny_bert6(base / "bert6"), "image": tiny_efficientnet16(base / "efficientnet16")}


def tiny_bert6(folder: Path) -> Path:
    """conftest's tiny BERT with the 6 layers of MiniLM, so `strategy.freeze_layers` of the recipes applies."""
    from transformers import AutoModel, BertTokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(folder)
    config = tiny_config("bert")
    config.num_hidden_layers = 6
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def tiny_efficientnet16(folder: Path) -> Path:
    """test_vision's tiny EfficientNet with the 16 blocks of EfficientNet-Lite0 (digits freezes 12 of them),
    BatchNorm statistics calibrated on random pictures like a trained CNN's."""
    from test_vision import calibrate_like_a_trained_cnn, tiny_processor, tiny_vision_config
    from transformers import AutoModel

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    config = tiny_vision_config("efficientnet")
    config.depth_coefficient = 1.0
    model = AutoModel.from_config(config)
    assert len(model.encoder.blocks) == 16
    calibrate_like_a_trained_cnn(model)
    model.save_pretrained(folder)
    tiny_processor("efficientnet").save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------ tiny data

def slice_shared_data(raw: dict, dest: Path, n_train: int = 120, n_eval: int = 40, seed: int = 0) -> None:
    """Seeded slices of the real files a recipe reads, at the same paths below `dest` (the new TEXTXFER_DATA).

    Data files keep their first line (a header where there is one) and a random sample of the rest, in file
    order; CSV files are sliced by record (quoted fields span lines), their evaluation rows drawn from the classes
    of the train slice (BANKING77 has 77); image folders keep the first few files of each folder; anything else
    a recipe names (label lists) is copied whole."""
    import shutil

    rng = random.Random(seed)
    label, train_labels = (raw.get("data") or {}).get("label_column", "label"), set()
    for key, rel in sorted(data_refs(raw), key=lambda ref: not ref[0].endswith(".train")):
        src, dst = SHARED_DATA / rel, dest / rel
        if dst.exists():
            continue
        split = key.rsplit(".", 1)[-1]
        n = n_train if split == "train" else n_eval
        if src.is_dir():
            per_folder = 6 if split == "train" else 4
            files = sorted(f for f in src.rglob("*") if f.is_file())
            for folder in sorted({f.parent for f in files}):
                for f in [f for f in files if f.parent == folder][:per_folder]:
                    (dst / f.parent.relative_to(src)).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dst / f.relative_to(src))
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if split not in ("train", "validation", "test"):
            shutil.copyfile(src, dst)
        elif src.suffix == ".csv":
            with src.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            column = rows[0].index(label) if label in rows[0] else None
            pool = list(range(1, len(rows)))
            if column is not None and split != "train":  # test classes must occur in train (else refused)
                pool = [i for i in pool if rows[i][column] in train_labels]
            keep = rows[:1] + [rows[i] for i in sorted(rng.sample(pool, min(n, len(pool))))]
            if column is not None and split == "train":
                train_labels |= {row[column] for row in keep[1:]}
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(keep)
            dst.write_text(buffer.getvalue(), encoding="utf-8")
        else:
            lines = src.read_bytes().splitlines(keepends=True)
            picked = sorted(rng.sample(range(1, len(lines)), min(n, len(lines) - 1)))
            dst.write_bytes(b"".join([lines[0]] + [lines[i] for i in picked]))


def synthesize_sst2(dest: Path, seed: int = 0) -> None:
    """SST-2-shaped files (`sentence<TAB>label` with a header, labels 0/1) at dest/sst2/{train,dev}.tsv."""
    rng = random.Random(seed)
    words = {0: ["bad", "awful", "poor", "sad"], 1: ["good", "great", "happy", "fine"]}
    filler = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor"]
    (dest / "sst2").mkdir(parents=True)
    for split, n in (("train", 120), ("dev", 40)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            text = rng.sample(filler, rng.randint(1, 6)) + [rng.choice(words[i % 2])]
            rng.shuffle(text)
            rows.append(f"{' '.join(text)}\t{i % 2}")
        (dest / "sst2" / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


# recipes run on synthesized files instead of slices of the real ones: fast, so in the default run
SYNTHESIZED = {"sst2.yaml": synthesize_sst2}


def shrink(raw: dict, models: dict[str, Path], installed: bool) -> list[str]:
    """`--set` overrides that make a recipe's run take seconds and leave the rest of it as written. `installed`:
    the recipe reads installed data (not sliced): its carved validation and test splits are made small too."""
    data = raw.get("data") or {}
    if is_image(raw):
        over = [f"model.name={models['image']}", "model.image_size=32"]
    else:
        over = [f"model.name={models['text']}", "model.max_length=32"]
    if data.get("examples_per_class") is not None:
        over.append("data.examples_per_class=8")
    else:
        over.append("data.max_train_examples=24")
    if installed:
        over += [f"data.{k}=0.02" for k in ("validation_split", "test_split") if (data.get(k) or 0) > 0.02]
    over += ["training.epochs=2", "training.batch_size=8", "training.checkpoint_every=2",
             "training.keep_checkpoints=1"]
    return over


# ------------------------------------------------------------------------------------------------ the runs

def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text(encoding="utf-8"))


def without_timings(history: dict) -> dict:
    """history.json less the contrastive stage's wall time (a resumed run keeps the killed run's figure)."""
    stage = history.get("contrastive_stage")
    return {**history, "contrastive_stage": {k: v for k, v in stage.items() if k != "seconds"}} if stage else history


def assert_same_run(a: Path, b: Path) -> None:
    assert read(a, "metrics.json") == read(b, "metrics.json")
    assert without_timings(read(a, "history.json")) == without_timings(read(b, "history.json"))
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} of {len(wa)} tensors differ after resume, e.g. {different[:3]}"


def kill_and_resume(name: str, overrides: list[str], base: Path, env: dict[str, str]) -> None:
    """The run SIGKILLed after a checkpoint (a child process), the uninterrupted run meanwhile (in this one), then
    `--resume`; assert the two runs agree."""
    from textxfer.cli.main import cli

    recipe = str(RECIPES / name)
    args = [arg for o in overrides for arg in ("--set", o)]
    reference, killed = base / "reference", base / "killed"
    ready, log = base / "ready", base / "child.log"
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", PAUSING_CHILD, "train", recipe, *args,
                                  "--output-dir", str(killed)], env={**env, "READY": str(ready)},
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        result = CliRunner().invoke(cli, ["train", recipe, *args, "--output-dir", str(reference)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        deadline = time.time() + 240
        while not ready.exists() or not ready.read_text():
            assert child.poll() is None, log.read_text()
            assert time.time() < deadline, "the training process never reached its last odd step\n" + log.read_text()
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    target, total = map(int, ready.read_text().split())
    assert 3 <= target < total, f"{name}: {total} steps are too few to kill after a checkpoint"
    saved = checkpoint.complete_checkpoints(killed / "checkpoints")
    assert saved and saved[-1].name == f"step-{target - 1:07d}", log.read_text()  # (and the best one, kept)
    assert not (killed / "run.json").exists() and not (killed / "model").exists()

    result = CliRunner().invoke(cli, ["train", recipe, *args, "--output-dir", str(killed), "--resume"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = (killed / "train.log").read_text(encoding="utf-8")
    assert f"resumed from {saved[-1]}: step {target - 1} of {total}" in text
    assert_same_run(reference, killed)


def run_case(name: str, models: dict[str, Path], base: Path, monkeypatch, data_root: Path | None) -> None:
    env = {**os.environ, "TEXTXFER_CACHE": str(base / "cache")}  # the frozen-feature disk cache, shared by the runs
    if data_root is not None:
        env["TEXTXFER_DATA"] = str(data_root)
    for k in ("TEXTXFER_CACHE", "TEXTXFER_DATA"):
        if k in env:
            monkeypatch.setenv(k, env[k])
    kill_and_resume(name, shrink(raw_recipe(name), models, installed=data_root is None), base, env)


def test_every_bundled_recipe_is_covered():
    from textxfer.cli.main import RECIPES_DIR

    assert KNOWN <= set(RECIPE_FILES), f"recipes missing from {RECIPES}: {sorted(KNOWN - set(RECIPE_FILES))}"
    assert {p.name for p in Path(RECIPES_DIR).glob("*.yaml")} == set(RECIPE_FILES)
    assert [c.values[0] for c in cases()] == RECIPE_FILES


@pytest.mark.parametrize("name", cases())
def test_sigkill_then_resume_matches_the_uninterrupted_run(name, models, tmp_path, monkeypatch):
    raw = raw_recipe(name)
    data_root = None
    if name in SYNTHESIZED:
        data_root = tmp_path / "data"
        SYNTHESIZED[name](data_root)
    elif data_refs(raw):
        missing = sorted({rel.split("/", 1)[0] for _, rel in data_refs(raw) if not (SHARED_DATA / rel).exists()})
        if missing:
            pytest.skip(f"{name} reads real data that is absent here: {', '.join(missing)} under {SHARED_DATA} "
                        "(set TEXTXFER_DATA to the shared data folder)")
        data_root = tmp_path / "data"
        slice_shared_data(raw, data_root)
    run_case(name, models, tmp_path, monkeypatch, data_root)


# ------------------------------------------------------------------------------------------------ recipe_diff

def test_recipe_diff_compares_what_json_gives_back():
    current = {"data": {"labels": {0: "negative", 1: "positive"}, "train": "x.tsv"}, "training": {"epochs": 2}}
    saved = json.loads(json.dumps(current))
    assert saved["data"]["labels"] == {"0": "negative", "1": "positive"}
    assert recipe_diff(saved, current) == [] and recipe_diff(current, saved) == []
    # int and string keys in one mapping: nothing to sort them against each other
    assert recipe_diff({"m": {1: "a", "b": 2, None: 3, 2.5: 4, False: 5}},
                       {"m": {"1": "a", "b": 2, "null": 3, "2.5": 4, "false": 5}}) == []
    assert recipe_diff({"t": (1, [2, (3,)])}, {"t": [1, [2, [3]]]}) == []
    assert recipe_diff({"e": 2}, {"e": 2.0}) == [] and recipe_diff({"n": float("nan")}, {"n": float("nan")}) == []
    assert recipe_diff({"p": Path("/a/b")}, {"p": "/a/b"}) == []


def test_recipe_diff_reports_real_changes_of_any_shape():
    assert recipe_diff({"data": {"labels": {"0": "negative", "1": "positive"}}},
                       {"data": {"labels": {0: "neg", 1: "positive"}}}) == ["data.labels.0: 'negative' -> 'neg'"]
    assert recipe_diff({"data": {"labels": {"0": "a"}}}, {"data": {"labels": {0: "a", 1: "b"}}}) == \
        ["data.labels.1: None -> 'b'"]
    assert recipe_diff({"data": {"labels": ["a", "b"]}}, {"data": {"labels": ["b", "a"]}}) == \
        ["data.labels: ['a', 'b'] -> ['b', 'a']"]
    assert recipe_diff({"data": {"labels": None}}, {"data": {"labels": {0: "a"}}}) == \
        ["data.labels: None -> {'0': 'a'}"]
    assert recipe_diff({"data": {"labels": {"0": "a"}}}, {"data": {"labels": "names.txt"}}) == \
        ["data.labels: {'0': 'a'} -> 'names.txt'"]
    assert recipe_diff({"data": {"labels": [{"x": 1}]}}, {"data": {"labels": [{"x": 2}]}}) == \
        ["data.labels: [{'x': 1}] -> [{'x': 2}]"]
    assert recipe_diff({"a": True}, {"a": 1}) == ["a: True -> 1"]
    assert recipe_diff({"a": "1"}, {"a": 1}) == ["a: '1' -> 1"]
    assert recipe_diff(None, {"a": 1}) == ["recipe: None -> {'a': 1}"]
    assert recipe_diff({"a": {1: object}}, {"a": {"1": str(object)}}) == []


def test_resume_check_accepts_json_keys_and_refuses_changed_labels():
    recipe = load_recipe(RECIPES / "sst2.yaml", ["data.train=train.tsv", "data.validation=dev.tsv"])
    current = to_dict(recipe)
    assert current["data"]["labels"] == {0: "negative", 1: "positive"}
    saved = json.loads(json.dumps(current))
    assert resuming.check_recipe(saved, current) == []
    changed = to_dict(load_recipe(RECIPES / "sst2.yaml", ["data.train=train.tsv", "data.validation=dev.tsv",
                                                         "data.labels={0: negative, 1: good}"]))
    with pytest.raises(UserError, match=r"model, data or strategy differ") as e:
        resuming.check_recipe(saved, changed)
    assert "data.labels.1: 'positive' -> 'good'" in str(e.value)
    listed = to_dict(load_recipe(RECIPES / "sst2.yaml", ["data.train=train.tsv", "data.validation=dev.tsv",
                                                        "data.labels=[negative, positive]"]))
    with pytest.raises(UserError, match=r"data\.labels: \{'0': 'negative', '1': 'positive'\} -> \['negative'"):
        resuming.check_recipe(saved, listed)
    notes = resuming.check_recipe(saved, {**current, "training": {**current["training"], "epochs": 3}})
    assert notes == ["resuming with a changed recipe key (the run continues with the new value): "
                     "training.epochs: 2.0 -> 3"]
    for broken in ({}, None, ["model"]):
        with pytest.raises(UserError, match="holds no recipe"):
            resuming.check_recipe(broken, current)


def test_resume_refuses_training_keys_the_checkpoint_fixes():
    """A new batch size would leave the saved position past the end of an epoch (the loop would spin); a new
    learning rate would be overridden by the restored optimizer while the record says it was used."""
    current = to_dict(load_recipe(RECIPES / "sst2.yaml", ["data.train=train.tsv", "data.validation=dev.tsv"]))
    saved = json.loads(json.dumps(current))
    for key, value in (("batch_size", 64), ("learning_rate", 1e-3)):
        changed = {**current, "training": {**current["training"], key: value}}
        with pytest.raises(UserError, match=rf"training.{key}: .* -> .*\(the .*\)") as e:
            resuming.check_recipe(saved, changed)
        assert "Restore these values" in str(e.value)


# ------------------------------------------------------------------------------------------------ contrastive stage

class Interrupted(Exception):
    """Raised inside a training step to stop a run after a checkpoint (as a kill would, in this process)."""


def test_resume_refuses_a_changed_contrastive_stage(models, tmp_path, monkeypatch):
    """quickstart.yaml (a contrastive stage, then the classifier on the cached tuned body) stopped in the
    classifier phase after a checkpoint: resumed with another `training.contrastive.learning_rate`, the stage tunes
    the body differently, so the checkpointed classifier no longer fits its features: refused with exit code 2
    and a message naming the stage (the frozen-part hash covers the tuned weights, hashed before the cache swaps
    them out of the model). Resumed with the same settings, the run continues and finishes."""
    import textxfer.engine.loop as tr
    from textxfer.cli.main import cli

    name = "quickstart.yaml"
    assert raw_recipe(name)["training"]["contrastive"]["learning_rate"] == 1.0e-4
    monkeypatch.setenv("TEXTXFER_CACHE", str(tmp_path / "cache"))
    overrides = shrink(raw_recipe(name), models, installed=True)
    args = ["train", str(RECIPES / name), *[arg for o in overrides for arg in ("--set", o)],
            "--output-dir", str(tmp_path / "run")]
    step = tr.Loop.train_step

    def train_step(self, indices):
        if self.state.progress.step == 3:  # after the checkpoint of step 2
            raise Interrupted(f"step {self.state.progress.step} of {self.total_steps}")
        return step(self, indices)

    with monkeypatch.context() as m:
        m.setattr(tr.Loop, "train_step", train_step)
        result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Interrupted), result.output + repr(result.exception)
    saved = checkpoint.complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert saved and saved[-1].name == "step-0000002"
    assert checkpoint.read_state(saved[-1]).get("cache_key")  # the classifier phase reads the cached tuned body

    changed = CliRunner().invoke(cli, [*args, "--resume", "--set", "training.contrastive.learning_rate=3.0e-4"])
    assert changed.exit_code == 2, changed.output + repr(changed.exception)
    message = " ".join(changed.output.split())
    assert f"error: Cannot resume from {saved[-1]}: the frozen part of the model (or its cached features) " \
           "differs" in message
    assert "`training.contrastive`" in message and "stage tuned the body differently" in message
    assert not (tmp_path / "run" / "run.json").exists()

    same = CliRunner().invoke(cli, [*args, "--resume"])
    assert same.exit_code == 0, same.output + repr(same.exception)
    assert f"resumed from {saved[-1]}: step 2 of " in (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert (tmp_path / "run" / "run.json").exists()
