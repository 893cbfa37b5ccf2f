"""Shared fixtures: tiny random checkpoints of every covered text architecture, built offline, and tiny data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
AUTO_PRECISION_ENV = "TEXTXFER_AUTO_PRECISION"  # textxfer.core.precision.ENV_AUTO (not imported here: keeps collection light)


def pytest_addoption(parser):
    parser.addoption(
        "--auto-precision", choices=("native", "bf16", "no"), default=None,
        help="What `training.mixed_precision: auto` resolves to in this run: `bf16` runs every auto-precision test "
             "as on a bf16-native CPU or GPU (emulated where the CPU lacks bf16: slower, still correct), `no` as on an "
             "fp32-only CPU, `native` (default) as this machine decides. Sets TEXTXFER_AUTO_PRECISION.")


def pytest_configure(config):
    choice = config.getoption("--auto-precision")
    if choice is not None:
        os.environ[AUTO_PRECISION_ENV] = choice


def pytest_report_header(config):
    from textxfer.core.precision import effective_mixed_precision

    return f"textxfer: mixed_precision auto -> {effective_mixed_precision('auto')}"


@pytest.fixture(scope="session")
def auto_precision() -> str:
    """What `training.mixed_precision: auto` resolves to in this test run: `bf16` or `no`."""
    from textxfer.core.precision import effective_mixed_precision

    return effective_mixed_precision("auto")
SHARED_DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data"))

WORDS = ["good", "great", "fine", "happy", "bad", "awful", "poor", "sad", "the", "a", "movie", "film", "was",
         "is", "very", "plot", "actor", "ok", "news", "sport", "ball", "goal", "market", "stock", "bank"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS

ARCHS = ["bert", "distilbert", "roberta", "electra", "albert", "deberta-v2", "xlm-roberta"]


def with_pythonpath(folder: Path) -> str:
    """PYTHONPATH for a child process: `folder` first, then whatever this process was given (a machine where the
    dependencies come from PYTHONPATH keeps them)."""
    return os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)


def load_script(name: str):
    """A script of `scripts/` imported as a module (the scripts are not a package)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(arch: str):
    import transformers as T

    common = dict(vocab_size=len(VOCAB) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=128, pad_token_id=0)
    if arch == "bert":
        return T.BertConfig(**common)
    if arch == "distilbert":
        return T.DistilBertConfig(vocab_size=len(VOCAB) + 2, dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                  max_position_embeddings=128, pad_token_id=0)
    if arch == "roberta":
        return T.RobertaConfig(**common)
    if arch == "xlm-roberta":
        return T.XLMRobertaConfig(**common)
    if arch == "electra":
        return T.ElectraConfig(**{**common, "embedding_size": 16})
    if arch == "albert":
        return T.AlbertConfig(**{**common, "embedding_size": 16})
    if arch == "deberta-v2":
        return T.DebertaV2Config(**common, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                 position_buckets=8, max_relative_positions=16)
    raise ValueError(arch)


def make_tiny_checkpoint(arch: str, folder: Path, with_head: bool = False) -> Path:
    """Save a tiny random base model (no classifier: like a pretrained checkpoint) and a WordPiece tokenizer."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, BertTokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    # transformers 5: pass the vocabulary itself (vocab_file= is ignored and every word becomes [UNK])
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    assert tok.unk_token_id not in tok("good film")["input_ids"]
    tok.save_pretrained(folder)
    cfg = tiny_config(arch)
    model = AutoModelForSequenceClassification.from_config(cfg) if with_head else AutoModel.from_config(cfg)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny-models")
    return {a: make_tiny_checkpoint(a, base / a) for a in ARCHS}


def write_tiny_dataset(folder: Path, n: int = 48, seed: int = 0) -> dict[str, Path]:
    """Three learnable classes (positive/negative/sport words), CSV train and validation files."""
    rng = random.Random(seed)
    vocab = {"pos": ["good", "great", "happy", "fine"], "neg": ["bad", "awful", "poor", "sad"],
             "sport": ["sport", "ball", "goal"]}
    filler = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in (("train", n), ("validation", n // 2)):
        rows = ["text,label"]
        for i in range(count):
            label = list(vocab)[i % 3]
            words = rng.sample(filler, rng.randint(1, 6)) + [rng.choice(vocab[label])]
            rng.shuffle(words)
            rows.append(f"{' '.join(words)},{label}")
        paths[split] = folder / f"{split}.csv"
        paths[split].write_text("\n".join(rows) + "\n")
    return paths


@pytest.fixture
def tiny_data(tmp_path) -> dict[str, Path]:
    return write_tiny_dataset(tmp_path / "data")


def tiny_recipe(model: Path, data: dict[str, Path], out: Path, **over) -> dict:
    recipe = {
        "model": {"name": str(model), "max_length": 32},
        "data": {"train": str(data["train"]), "validation": str(data["validation"])},
        "strategy": {"name": "full"},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 0, "cache": "memory"},
        "output_dir": str(out),
    }
    for key, value in over.items():
        node = recipe
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return recipe
