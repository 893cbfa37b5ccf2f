"""`textxfer push RUN_DIR REPO --onnx` against the loopback Hub of tests/hub_server.py: the export goes to the repo's
onnx/ folder next to the PyTorch model, and the card's two ONNX snippets (textxfer, plain onnxruntime) run as
written on a fresh download and predict what the run predicts.

Precision: fp32 against fp32 (the run's saved model, its fp32 export)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from test_hub import _env, hf_home, hub, run_dir, textxfer  # noqa: F401  (fixtures and helpers)

import textxfer as tx

EXAMPLES = ["An example sentence to classify.", "Another one."]


def test_push_onnx_uploads_the_export_and_the_card_loads_it(hub, hf_home, run_dir, tmp_path):  # noqa: F811
    pushed = textxfer(hub, hf_home, "push", str(run_dir), "alice/tiny-onnx", "--onnx")
    assert pushed.returncode == 0, pushed.stderr
    commit = hub.state.repos["alice/tiny-onnx"].history("main")[0]
    assert {"onnx/model.onnx", "onnx/tokenizer.json", "onnx/textxfer_export.json", "model.safetensors",
            "README.md"} <= set(commit.files)
    card = commit.files["README.md"].content.decode()
    assert "### ONNX, without torch (fp32)" in card
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    onnx_snippets = [s for s in snippets if "snapshot_download" in s]
    assert len(onnx_snippets) == 2 and "ort.InferenceSession" in onnx_snippets[1]
    outputs = []
    for code in onnx_snippets:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                                env=_env(hub, hf_home))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    want = tx.load(run_dir).predict(EXAMPLES)
    assert f"'label': '{want[0][0]['label']}'" in outputs[0]
    assert [label for label, _ in json.loads(outputs[1].replace("(", "[").replace(")", "]").replace("'", '"'))] \
        == [w[0]["label"] for w in want]

    again = textxfer(hub, hf_home, "push", str(run_dir), "alice/tiny-onnx")  # without --onnx: the stale export goes
    assert again.returncode == 0, again.stderr
    files = set(hub.state.repos["alice/tiny-onnx"].history("main")[0].files)
    assert not any(f.startswith("onnx/") for f in files) and "model.safetensors" in files


def test_push_onnx_options_are_checked_before_anything_is_sent(hub, hf_home, run_dir):  # noqa: F811
    quantize = textxfer(hub, hf_home, "push", str(run_dir), "alice/x", "--quantize", "int8")
    assert quantize.returncode == 2 and "--quantize applies to the ONNX export: add --onnx" in quantize.stderr
    adapter = textxfer(hub, hf_home, "push", str(run_dir), "alice/x", "--onnx", "--adapter-only")
    assert adapter.returncode == 2 and "cannot go with --adapter-only" in adapter.stderr
    assert "alice/x" not in hub.state.repos
