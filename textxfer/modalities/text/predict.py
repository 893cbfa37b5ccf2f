"""Batched inference on a saved model: tokenise once, sort by length, pad per batch, no autograd.

Sorting by length is what makes this faster than `pipeline()` on many short texts: padding is minimal.
The model is the plain `transformers` folder, so what this predicts is what `pipeline()` predicts.

On a CPU where torch has MKL, the forward passes run with oneDNN switched off (`cpu_gemm`), so the linear layers
use MKL's GEMM. Every batch width is a new matrix shape, and oneDNN builds and keeps state per shape: over a large
input its peak memory grows with the widths seen, and it is no faster than MKL on these batches (docs/deploy.md,
*Flat memory*, has the figures).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from textxfer.backbones.load import SAFE_LOADING, input_names
from textxfer.core.inputs import as_texts, check_batch_size, check_pairs, check_top_k
from textxfer.core.layout import CONFIG_MAX_LENGTH, CONFIG_PAIR_COLUMN, find_model_dir
from textxfer.deploy.decisions import decisions, probabilities
from textxfer.modalities.text.batching import Collator, encode, sorted_batches

BATCH_SIZE = 64
"""Texts per forward pass (sorted by length, padded per batch) when `batch_size` is not given."""


class Classifier:
    """A saved text classifier. `textxfer.load(DIR).predict(["some text"])`.

    Texts are read as training read them: cut at the run's `model.max_length` tokens (recorded in the config as
    `textxfer_max_length`; older model folders: the tokenizer's `model_max_length`, at most 512), or at
    `max_length` when given. `pair_column` is the second-text column of a sentence-pair model (None otherwise):
    pass those texts as `pairs=`. `predict("one text")` is one input: a list of one result."""

    def __init__(self, model_dir: str | Path, device: str | None = None, max_length: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.dir = find_model_dir(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.dir, **SAFE_LOADING)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.input_names = input_names(self.model)
        cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.multi_label = cfg.problem_type == "multi_label_classification"
        thresholds = getattr(cfg, "textxfer_thresholds", None)
        self.thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * len(self.labels))
        self.pair_column = getattr(cfg, CONFIG_PAIR_COLUMN, None)
        trained = getattr(cfg, CONFIG_MAX_LENGTH, None)
        self.max_length = int(max_length or trained
                              or min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512))

    @torch.inference_mode()
    def logits(self, texts: str | Iterable[str], pairs: str | Iterable[str] | None = None,
               batch_size: int | None = BATCH_SIZE) -> np.ndarray:
        """One row of logits per text (see `predict` for what `texts`, `pairs` and `batch_size` accept)."""
        texts = as_texts(texts)
        pairs = check_pairs(texts, pairs, self.pair_column)
        batch_size = check_batch_size(batch_size, BATCH_SIZE)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        enc = encode(self.tokenizer, texts, pairs, np.zeros(len(texts), dtype=np.int64), self.max_length)
        collate = Collator(enc, self.tokenizer.pad_token_id)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        with cpu_gemm(self.device, self.model.dtype):
            for idx in sorted_batches(enc.lengths, batch_size):
                batch = collate(idx)
                inputs = {k: batch[k].to(self.device) for k in self.input_names if k in batch}
                out[idx] = self.model(**inputs).logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: str | Iterable[str], pairs: str | Iterable[str] | None = None,
                      batch_size: int | None = BATCH_SIZE) -> np.ndarray:
        """One row of label probabilities per text: softmax, or each label's sigmoid (multi-label)."""
        return probabilities(self.logits(texts, pairs, batch_size), self.multi_label)

    def predict(self, texts: str | Iterable[str], top_k: int = 1, pairs: str | Iterable[str] | None = None,
                batch_size: int | None = BATCH_SIZE) -> list[list[dict]]:
        """Per text, a list of {label, score}: the top k labels, or every label above threshold (multi-label).

        `texts` is a list of strings, or any iterable of them (tuple, generator, numpy array, pandas Series),
        read in order; a lone string is one text, and gives a list of one result (the same shape as
        `predict([text])`). Every element must be a string: None, NaN (a missing table value) and numbers are
        refused by position rather than read as text. `pairs` are the second texts of a sentence-pair model, one
        per text, checked the same way. `top_k` is a whole number of 1 or more (above the number of labels:
        every label); `batch_size` a whole number of 1 or more, or None for the default. Bad input is a
        `UserError` saying what to change, raised before any work."""
        top_k = check_top_k(top_k)
        return decisions(self.probabilities(texts, pairs, batch_size), self.labels, self.multi_label,
                         self.thresholds, top_k)


@contextmanager
def cpu_gemm(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """For an fp32 model on a CPU with MKL, oneDNN off for the block (restored after), so the matrix products go to
    MKL's GEMM, which keeps nothing per shape: prediction's batches each have their own width, and oneDNN's
    per-shape state grows the peak memory with them. Elsewhere (a GPU, bf16 weights, which oneDNN computes natively,
    a torch without MKL such as ARM builds) nothing changes."""
    if (device.type != "cpu" or dtype != torch.float32 or not torch.backends.mkl.is_available()
            or not torch.backends.mkldnn.enabled):
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


def load(model_dir: str | Path, device: str | None = None, max_length: int | None = None) -> Classifier:
    """Load a run directory (or the model folder in it) for prediction (`textxfer.load` also reads exported
    folders)."""
    return Classifier(model_dir, device=device, max_length=max_length)
