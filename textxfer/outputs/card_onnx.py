"""The model card's ONNX section (`textxfer push --onnx`): how to load the exported model from the repo's `onnx/`
folder with textxfer (no torch), and with plain onnxruntime and tokenizers."""

from __future__ import annotations

import json

ONNX_FOLDER = "onnx"
"""Where `textxfer push --onnx` puts the export in the repo."""


def onnx_usage(repo_id: str, revision: str | None, quantize: str, multi_label: bool,
               folder: str | None = None) -> list[str]:
    """Card rows: two snippets that run as written, loading the export from the repo (or from a local `folder`:
    what the tests run)."""
    rev = f", revision={json.dumps(revision)}" if revision else ""
    where = (f"folder = {json.dumps(folder)}\n" if folder else
             "from huggingface_hub import snapshot_download\n\n"
             f"folder = snapshot_download({json.dumps(repo_id)}{rev}, allow_patterns=[\"{ONNX_FOLDER}/*\"]) "
             f"+ \"/{ONNX_FOLDER}\"\n")
    decide = ("probs = 1 / (1 + np.exp(-logits))  # multi-label: each label on its own\n"
              "thresholds = np.asarray(manifest[\"thresholds\"])\n"
              "print([[manifest[\"labels\"][i] for i in np.flatnonzero(p >= thresholds)] for p in probs])\n"
              if multi_label else
              "probs = np.exp(logits - logits.max(-1, keepdims=True))\nprobs /= probs.sum(-1, keepdims=True)\n"
              "print([(manifest[\"labels\"][int(p.argmax())], round(float(p.max()), 4)) for p in probs])\n")
    textxfer_code = (where + "import textxfer\n\n"
                     "classifier = textxfer.load(folder)  # onnxruntime + tokenizers, no torch\n"
                     "print(classifier.predict([\"An example sentence to classify.\"]))\n")
    plain_code = (
        "import json\n\nimport numpy as np\nimport onnxruntime as ort\nfrom tokenizers import Tokenizer\n\n"
        + where
        + "manifest = json.load(open(f\"{folder}/textxfer_export.json\"))  # labels, max_length, thresholds, ...\n"
        "session = ort.InferenceSession(f\"{folder}/{manifest['model_file']}\")\n"
        "tokenizer = Tokenizer.from_file(f\"{folder}/tokenizer.json\")\n"
        "tokenizer.enable_truncation(manifest[\"max_length\"])\n"
        "tokenizer.enable_padding(pad_id=manifest[\"pad_token_id\"])\n"
        "enc = tokenizer.encode_batch([\"An example sentence to classify.\", \"Another one.\"])\n"
        "feed = {\"input_ids\": [e.ids for e in enc], \"attention_mask\": [e.attention_mask for e in enc],\n"
        "        \"token_type_ids\": [e.type_ids for e in enc]}\n"
        "logits = session.run(None, {k: np.array(feed[k], dtype=np.int64) for k in manifest[\"inputs\"]})[0]\n"
        + decide)
    what = "int8 weights" if quantize == "int8" else "fp32"
    return ["", f"### ONNX, without torch ({what})", "",
            f"The `{ONNX_FOLDER}/` folder holds the same classifier exported with `textxfer export` "
            f"(`{ONNX_FOLDER}/textxfer_export.json` lists its labels, token limit, thresholds and checks). With "
            "textxfer (install it without its torch dependency: `pip install --no-deps textxfer` then "
            "`pip install onnxruntime tokenizers numpy pyyaml click`):",
            "", "```python", textxfer_code.rstrip(), "```", "",
            "With plain onnxruntime and tokenizers (`pip install onnxruntime tokenizers numpy huggingface_hub`):",
            "", "```python", plain_code.rstrip(), "```"]
