"""An exported text classifier: the `tokenizer.json` the run trained with (read by `tokenizers`), the ONNX graph
(run by onnxruntime), and the manifest's labels, token limit and thresholds. Same interface and outputs as
`textxfer.modalities.text.predict.Classifier`, without torch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from textxfer.core.errors import UserError
from textxfer.core.inputs import as_texts, check_batch_size, check_pairs, check_top_k
from textxfer.deploy.decisions import decisions, probabilities
from textxfer.deploy.manifest import TOKENIZER_FILE, read_manifest
from textxfer.deploy.session import open_session

BATCH_SIZE = 32
"""Texts per forward pass (sorted by length, padded per batch)."""


class OnnxTextClassifier:
    """An exported text classifier. `textxfer.load(EXPORTED).predict(["some text"])`.

    Texts are cut at the run's token limit (`max_length` overrides it), sentence pairs are read as training read
    them (`pairs=`; `pair_column` names the column the run used). `predict("one text")` is one input: a list of
    one result."""

    def __init__(self, path: str | Path, max_length: int | None = None, threads: int | None = None):
        self.dir, self.manifest = read_manifest(path)
        m = self.manifest
        if m.task != "text":
            raise UserError(f"{self.dir} holds an exported {m.task} model, not a text classifier.")
        self.labels = list(m.labels)
        self.multi_label = bool(m.multi_label)
        self.thresholds = np.asarray(m.thresholds if m.thresholds is not None else [0.5] * len(self.labels))
        self.pair_column = m.pair_column
        self.max_length = int(max_length or m.max_length or 512)
        self.input_names = list(m.inputs)
        self.tokenizer = load_tokenizer(self.dir / TOKENIZER_FILE, self.max_length)
        self.file = self.dir / m.model_file
        self.session = open_session(self.file, m, threads)

    def encode(self, texts: str | Iterable[str], pairs: str | Iterable[str] | None = None) -> list:
        """`tokenizers` encodings, cut at the token limit (longest first for pairs, as transformers cuts). The
        texts and pairs are checked as `predict` checks them: the tokenizer's own errors name no position."""
        texts = as_texts(texts)
        return self._encode(texts, check_pairs(texts, pairs, self.pair_column))

    def _encode(self, texts: list[str], pairs: list[str] | None) -> list:
        """`encode` of texts and pairs already checked."""
        if pairs is not None:
            return self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)))
        return self.tokenizer.encode_batch(texts)

    def logits(self, texts: str | Iterable[str], pairs: str | Iterable[str] | None = None,
               batch_size: int | None = BATCH_SIZE) -> np.ndarray:
        """One row of logits per text (see `predict` for what `texts`, `pairs` and `batch_size` accept)."""
        texts = as_texts(texts)
        pairs = check_pairs(texts, pairs, self.pair_column)
        batch_size = check_batch_size(batch_size, BATCH_SIZE)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not len(texts):
            return out
        enc = self._encode(texts, pairs)
        lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self.session.run(None, self.feed([enc[i] for i in idx]))[0]
        return out

    def feed(self, encodings: list) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch: token ids padded to its longest with the pad id, the attention mask,
        and the segment ids where the graph takes them."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.manifest.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: arrays[k] for k in self.input_names}

    def probabilities(self, texts: str | Iterable[str], pairs: str | Iterable[str] | None = None,
                      batch_size: int | None = BATCH_SIZE) -> np.ndarray:
        """One row of label probabilities per text: softmax, or each label's sigmoid (multi-label)."""
        return probabilities(self.logits(texts, pairs, batch_size), self.multi_label)

    def predict(self, texts: str | Iterable[str], top_k: int = 1, pairs: str | Iterable[str] | None = None,
                batch_size: int | None = BATCH_SIZE) -> list[list[dict]]:
        """Per text, a list of {label, score}: the top k labels, or every label above threshold (multi-label).

        Accepts what the PyTorch `Classifier.predict` accepts (`textxfer.core.inputs` checks both): a list or any
        iterable of strings (tuple, generator, numpy array, pandas Series), read in order, or a lone string, which
        is one text and gives a list of one result. None, NaN and numbers among the texts or `pairs` are refused
        by position; `top_k` and `batch_size` are whole numbers of 1 or more (`batch_size` None: the default)."""
        top_k = check_top_k(top_k)
        return decisions(self.probabilities(texts, pairs, batch_size), self.labels, self.multi_label,
                         self.thresholds, top_k)


def load_tokenizer(file: Path, max_length: int):
    """The run's fast tokenizer from its `tokenizer.json`, cutting at `max_length` tokens and never padding (the
    batches pad themselves)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("Predicting with an exported model needs tokenizers: pip install 'textxfer[onnx]'.") \
            from None
    if not file.is_file():
        raise UserError(f"{file} is missing: an exported text model needs its tokenizer. Export the run again: "
                        "textxfer export RUN_DIR OUT --overwrite.")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        raise UserError(f"{file} cannot be read as a tokenizer ({str(e)[:200]}). Export the run again: textxfer "
                        "export RUN_DIR OUT --overwrite.") from None
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    return tok
