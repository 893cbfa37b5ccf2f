"""Bad input gets one clear paragraph and exit code 2, never a traceback (issue: textxfer end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_recipe, with_pythonpath

from textxfer.cli.main import cli
from textxfer.config.reading import load_recipe


def run_cli(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output + (result.stderr if hasattr(result, "stderr") else "")


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def good(tiny_models, tiny_data, tmp_path) -> dict:
    return tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "out", training__epochs=1)


def expect_error(tmp_path, recipe: dict | None, *extra: str, match: str, path: Path | None = None):
    target = path or write_recipe(tmp_path, recipe)
    code, out = run_cli("train", str(target), *extra)
    assert code == 2, out
    assert "Traceback" not in out
    assert match in out, out
    return out


def test_missing_recipe_file(tmp_path):
    expect_error(tmp_path, None, match="does not exist", path=tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: x\ntraining: [1, 2\n")
    out = expect_error(tmp_path, None, match="not valid YAML", path=bad)
    assert "line" in out


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path, good):
    """`learning_rate: 3e-2` is 0.03 in a recipe file and in `--set`, not the string '3e-2' (YAML 1.1's rule)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(good).replace("learning_rate: 0.001", "learning_rate: 3e-2"))
    assert "3e-2" in path.read_text()
    assert load_recipe(path).training.learning_rate == pytest.approx(0.03)
    recipe = load_recipe(path, ["training.head_learning_rate=1e-1", "training.weight_decay=5E-3"])
    assert recipe.training.head_learning_rate == pytest.approx(0.1)
    assert recipe.training.weight_decay == pytest.approx(0.005)


def test_unknown_key_lists_allowed_keys(tmp_path, good):
    good["training"]["epochz"] = 3
    out = expect_error(tmp_path, good, match="Unknown recipe key `training.epochz`")
    assert "epochs" in out


def test_wrong_type_names_key_and_type(tmp_path, good):
    good["training"]["batch_size"] = "many"
    expect_error(tmp_path, good, match="`training.batch_size`")


def test_bad_literal_lists_allowed_values(tmp_path, good):
    good["strategy"]["name"] = "magic"
    out = expect_error(tmp_path, good, match="`strategy.name`")
    assert "'lora'" in out


def test_a_bad_value_inside_an_optional_section_names_its_own_key(tmp_path, good):
    good["training"]["contrastive"] = {"epochs": 1, "loss": "cosin"}
    out = expect_error(tmp_path, good, match="`training.contrastive.loss` is 'cosin'; allowed values: 'cosine', "
                                             "'supcon'. Did you mean 'cosine'?")
    assert "ContrastiveConfig" not in out


def test_optional_numbers_are_named_in_words(tmp_path, good):
    good["data"]["examples_per_class"] = "abc"
    expect_error(tmp_path, good, match="`data.examples_per_class` is 'abc', but it must be a whole number or null")


def test_model_path_that_does_not_exist(tmp_path, good):
    good["model"]["name"] = str(tmp_path / "no-model")
    expect_error(tmp_path, good, match="does not exist")


def test_model_that_cannot_classify_text(tmp_path, good):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folder = tmp_path / "wav2vec2"  # a speech encoder: no text (or image) classification head exists for it
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                                 conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                 num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)).save_pretrained(folder)
    good["model"]["name"] = str(folder)
    expect_error(tmp_path, good, match="no sequence-classification model")


def test_folder_without_config(tmp_path, good):
    (tmp_path / "empty-model").mkdir()
    good["model"]["name"] = str(tmp_path / "empty-model")
    expect_error(tmp_path, good, match="no config.json")


def test_missing_data_file(tmp_path, good):
    good["data"]["train"] = str(tmp_path / "missing.csv")
    expect_error(tmp_path, good, match="missing.csv")


def test_empty_data_file(tmp_path, good):
    (tmp_path / "empty.csv").write_text("")
    good["data"]["train"] = str(tmp_path / "empty.csv")
    expect_error(tmp_path, good, match="empty")


def test_absent_text_column_lists_columns(tmp_path, good):
    good["data"]["text_column"] = "sentence"
    out = expect_error(tmp_path, good, match="no column `sentence`")
    assert "text" in out and "label" in out


def test_absent_label_column(tmp_path, good):
    good["data"]["label_column"] = "category"
    expect_error(tmp_path, good, match="no column `category`")


def test_finished_run_is_not_overwritten(tmp_path, good):
    out = Path(good["output_dir"])
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"finished": True}))
    expect_error(tmp_path, good, match="--overwrite")


def test_clear_replaced_run_removes_the_earlier_runs_files_only(tmp_path):
    """A new run without a test split must not report the old run's test predictions as its own, and a new run
    stopped midway must not look finished with the old model; files that are not the run's are the user's."""
    from textxfer.engine.setup import REPLACED_BY_A_NEW_RUN, clear_replaced_run

    out = tmp_path / "run"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions" / "test.jsonl").write_text("{}\n")
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    for name in ("plots", "model", "self_training"):
        (out / name).mkdir()
    for name in ("errors.csv", "run.json", "metrics.json", "history.json", "notes.txt"):
        (out / name).write_text("x\n")
    clear_replaced_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert {"run.json", "model", "predictions", "checkpoints"} <= set(REPLACED_BY_A_NEW_RUN)


def _finished_run(out: Path) -> None:
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"finished": True}))
    (out / "train.log").write_text("the earlier run's log\n")
    (out / "checkpoints" / "step-9").mkdir(parents=True)


def test_overwrite_with_bad_data_leaves_the_earlier_run_whole(tmp_path, good):
    """`--overwrite` removes nothing until the new run has read its data: a typo costs the earlier run nothing."""
    out = Path(good["output_dir"])
    _finished_run(out)
    good["data"]["text_column"] = "sentence"
    expect_error(tmp_path, good, "--overwrite", match="sentence")
    assert json.loads((out / "run.json").read_text()) == {"finished": True}
    assert (out / "model" / "config.json").is_file() and (out / "checkpoints" / "step-9").is_dir()
    assert (out / "train.log").read_text() == "the earlier run's log\n"


def test_overwrite_replaces_the_earlier_run(tmp_path, good):
    out = Path(good["output_dir"])
    _finished_run(out)
    code, printed = run_cli("train", str(write_recipe(tmp_path, good)), "--overwrite")
    assert code == 0, printed
    assert not (out / "checkpoints" / "step-9").exists()
    assert json.loads((out / "run.json").read_text())["finished"] is True
    log = (out / "train.log").read_text()
    assert "the earlier run's log" not in log and "mixed precision" in log.splitlines()[0]


def test_max_length_beyond_the_models_positions_is_refused(tmp_path, good):
    good["model"]["max_length"] = 1000
    out = expect_error(tmp_path, good, match="`model.max_length` is 1000, but")
    assert "learnt positions for 128 tokens" in out


def test_evaluate_speaks_of_its_options_and_says_how_it_read_numbers(tmp_path, good):
    import logging

    import textxfer

    run = textxfer.train(good).output_dir
    (tmp_path / "empty.csv").write_text("")
    code, out = run_cli("evaluate", str(run), "--data", str(tmp_path / "empty.csv"))
    assert code == 2 and "--data" in out and "data.train" not in out
    (tmp_path / "nolabel.csv").write_text("text,gold\ngood film,pos\n")
    code, out = run_cli("evaluate", str(run), "--data", str(tmp_path / "nolabel.csv"))
    assert code == 2 and "--label-column" in out and "data.label_column" not in out
    (tmp_path / "ids.csv").write_text("text,label\ngood film,0\nbad film,1\n")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("textxfer").addHandler(handler)
    try:
        code, out = run_cli("evaluate", str(run), "--data", str(tmp_path / "ids.csv"))
    finally:
        logging.getLogger("textxfer").removeHandler(handler)
    assert code == 0, out
    assert any("were read as positions in the model's labels (0 = neg, 1 = pos" in s for s in said)


def test_freeze_layers_beyond_depth(tmp_path, good):
    good["strategy"] = {"name": "freeze", "freeze_layers": 9}
    expect_error(tmp_path, good, match="only 2 layer groups")


def test_fp16_on_cpu(tmp_path, good):
    good["training"]["mixed_precision"] = "fp16"
    expect_error(tmp_path, good, match="needs a GPU")


def test_set_overrides_and_env_expansion(tmp_path, good, monkeypatch):
    monkeypatch.setenv("TX_EPOCHS_DIR", str(tmp_path / "env-out"))
    good["output_dir"] = "${TX_EPOCHS_DIR}"
    good["data"]["encoding"] = "${TX_UNSET_VAR:-utf-8}"
    path = write_recipe(tmp_path, good)
    recipe = load_recipe(path, ["training.epochs=2.5", "strategy.name=head", "training.metric=macro_f1"])
    assert recipe.output_dir == str(tmp_path / "env-out")
    assert recipe.data.encoding == "utf-8"
    assert recipe.training.epochs == 2.5 and recipe.strategy.name == "head"
    good["output_dir"] = "${TX_SURELY_UNSET}"
    expect_error(tmp_path, good, match="TX_SURELY_UNSET")


def test_predict_on_a_folder_that_is_not_a_model(tmp_path):
    code, out = run_cli("predict", str(tmp_path), "--input", "-")
    assert code == 2 and "neither a textxfer run directory nor a model folder" in out
    (tmp_path / "checkpoints").mkdir()  # a run stopped before it saved its model
    code, out = run_cli("predict", str(tmp_path), "--input", "-")
    assert code == 2 and "stopped before saving its model" in out and "--resume" in out


def test_help_is_quick_and_lists_commands():
    """`textxfer --help` must not import torch/transformers/evaluate (seconds each)."""
    code = ("import sys, textxfer.cli.main as c; from click.testing import CliRunner; "
            "r = CliRunner().invoke(c.cli, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'transformers', 'evaluate', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy; print(r.output)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": with_pythonpath(Path(__file__).parent.parent)})
    assert r.returncode == 0, r.stderr
    for command in ("train", "predict", "evaluate", "recipes", "info"):
        assert command in r.stdout


def test_train_says_each_data_note_once(tmp_path, good):
    """The data layer logs a note as it finds it; `train` does not log the collected notes again."""
    train = Path(good["data"]["train"])
    train.write_text(train.read_text() + "an odd one,lonely\n")
    result = CliRunner().invoke(cli, ["train", str(write_recipe(tmp_path, good))])
    assert result.exit_code == 0, result.output
    assert result.output.count("train has a single example of 1 label(s): 'lonely'") == 1, result.output


def test_a_metric_the_run_does_not_record_is_refused_before_training(tmp_path, good):
    """A typo in `training.metric` used to surface after the first epoch, which was lost; `data check` says it too."""
    good["training"]["metric"] = "f1"
    out = expect_error(tmp_path, good, match="`training.metric` is 'f1'; a single-label run records accuracy")
    assert "macro_f1" in out and "epoch" not in out
    assert not (Path(good["output_dir"]) / "checkpoints").exists()
    code, printed = run_cli("data", "check", str(write_recipe(tmp_path, good)))
    assert code == 2 and "`training.metric` is 'f1'" in printed


@pytest.mark.parametrize("key, value, match", [
    ("training.epochs", ".nan", "`training.epochs` is nan: give a finite number"),
    ("training.epochs", "1e999", "`training.epochs` is inf: give a finite number"),
    ("training.learning_rate", ".nan", "`training.learning_rate` is nan"),
    ("training.contrastive.learning_rate", ".inf", "`training.contrastive.learning_rate` is inf"),
    ("training.seed", "-1", "`training.seed` must be in [0, 2**32 - 1]"),
    ("training.seed", "99999999999999999999", "`training.seed` must be in [0, 2**32 - 1]"),
    ("data.label_delimiter", "''", "`data.label_delimiter` is empty"),
])
def test_values_that_pass_their_type_but_not_training_are_refused(tmp_path, good, key, value, match):
    """nan passes every range check (it compares false), and numpy refuses seeds outside 32 bits deep in a run."""
    expect_error(tmp_path, good, "--set", f"{key}={value}", match=match)


def test_data_check_refuses_what_train_would(tmp_path, good):
    code, printed = run_cli("data", "check", str(write_recipe(tmp_path, good)), "--set", "model.max_length=99999")
    assert code == 2 and "`model.max_length` is 99999, but" in printed and "Traceback" not in printed
    code, printed = run_cli("data", "check", "hymenoptera-efficientnet")
    assert code == 2 and "reads text recipes; this recipe's task is image" in printed


def test_recipes_show_and_a_near_name_are_understood():
    code, printed = run_cli("recipes", "show", "quickstart")
    assert code == 0 and "output_dir" in printed
    code, printed = run_cli("recipes", "hymenoptera")
    assert code == 2 and "Did you mean `hymenoptera-efficientnet`?" in printed
