"""An exported model predicts and evaluates where torch cannot be imported, with the run's outputs.

Two kinds of torch-less process: `sys.modules["torch"] = None` (and transformers), as a check can do in one
line; and an interpreter whose packages are this environment's less torch and transformers (a container where
they were never installed): there `datasets` and `scipy` (which `evaluate` reads) see no torch either.

Precision: fp32 against fp32 (the saved model as stored, the fp32 graph); scores to 1e-5."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_recipe, with_pythonpath, write_tiny_dataset

import textxfer
from textxfer.outputs.onnx_export import export_run

ROOT = Path(__file__).resolve().parent.parent
WITHOUT = ("torch", "functorch", "torchgen", "transformers")


@pytest.fixture(scope="module")
def run_and_export(tiny_models, tmp_path_factory) -> tuple[Path, Path, dict[str, Path]]:
    base = tmp_path_factory.mktemp("torchless")
    data = write_tiny_dataset(base / "data")
    textxfer.train(tiny_recipe(tiny_models["bert"], data, base / "run", training__epochs=8,
                               training__learning_rate=5e-3))
    export_run(base / "run", base / "onnx")
    return base / "run", base / "onnx", data


@pytest.fixture(scope="module")
def torchless_packages(tmp_path_factory) -> Path:
    """A folder of links to every installed package except torch and transformers (and no .pth hooks)."""
    folder = tmp_path_factory.mktemp("site-without-torch")
    for packages in site.getsitepackages():
        for entry in Path(packages).iterdir():
            name = entry.name.split("-")[0].split(".")[0].lower()
            if name in WITHOUT or entry.suffix == ".pth" or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


def run_python(code: str, *, isolated_site: Path | None = None, stdin: str | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=with_pythonpath(ROOT))
    args = [sys.executable]
    if isolated_site is not None:  # no site-packages: only the project and the linked packages
        args.append("-S")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(isolated_site)])
    result = subprocess.run([*args, "-c", code], capture_output=True, text=True, env=env, input=stdin, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"


def test_load_and_predict_with_torch_blocked(run_and_export, tmp_path):
    run, onnx, data = run_and_export
    texts = [line.split(",")[0] for line in data["validation"].read_text().splitlines()[1:]]
    code = BLOCK + (f"import json, textxfer\nclf = textxfer.load({str(onnx)!r})\n"
                    f"print(json.dumps(clf.predict({texts!r}, top_k=2)))\n"
                    "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n")
    got = json.loads(run_python(code))
    want = textxfer.load(run).predict(texts, top_k=2)
    assert [[x["label"] for x in r] for r in got] == [[x["label"] for x in r] for r in want]
    assert [x["score"] for r in got for x in r] == pytest.approx([x["score"] for r in want for x in r], abs=1e-5)

    cli = BLOCK + ("from textxfer.cli.main import main\n"
                   f"sys.argv = ['textxfer', 'predict', {str(onnx)!r}, '--input', {str(data['validation'])!r}, "
                   f"'--output', {str(tmp_path / 'p.jsonl')!r}]\nmain()\n")
    run_python(cli)
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts and [r["label"] for r in rows] == [r[0]["label"] for r in want]
    stdin = run_python(BLOCK + f"from textxfer.cli.main import main\nsys.argv = ['textxfer', 'predict', "
                       f"{str(onnx)!r}]\nmain()\n", stdin="\n".join(texts[:3]) + "\n")
    assert [json.loads(x)["label"] for x in stdin.splitlines()] == [r[0]["label"] for r in want[:3]]


def test_predict_and_evaluate_where_torch_is_not_installed(run_and_export, torchless_packages, tmp_path):
    run, onnx, data = run_and_export
    probe = run_python("import importlib.util\nprint(importlib.util.find_spec('torch'), "
                       "importlib.util.find_spec('transformers'))", isolated_site=torchless_packages)
    assert probe.split() == ["None", "None"]
    code = ("import sys\nfrom textxfer.cli.main import main\n"
            f"sys.argv = ['textxfer', 'evaluate', {str(onnx)!r}, '--data', {str(data['validation'])!r}, '--json']\n"
            "main()\n")
    got = json.loads(run_python(code, isolated_site=torchless_packages))
    from textxfer.tools.evaluate import evaluate_file

    want, per_class = evaluate_file(run, str(data["validation"]), "text", "label")
    assert got["accuracy"] == want["accuracy"] and got["macro_f1"] == want["macro_f1"]
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert got["per_class"] == per_class
    predict = ("import sys\nfrom textxfer.cli.main import main\n"
               f"sys.argv = ['textxfer', 'predict', {str(onnx)!r}, '--input', {str(data['validation'])!r}]\nmain()\n")
    rows = [json.loads(x) for x in run_python(predict, isolated_site=torchless_packages).splitlines()]
    assert [r["label"] for r in rows] == [r[0]["label"] for r in textxfer.load(run).predict(
        [r["text"] for r in rows])]
