"""Tokenise once, then batch with little padding.

Short texts padded to the longest of a random batch waste most of the compute (SST-2 phrases: 13 tokens on
average, padded to 39). Length-grouped batches keep the order random across batches but put texts of similar
length together; padding is dynamic (to the longest in the batch).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.types as pa_types
import torch

from textxfer.core.heap import drop_resident_pages, read_only_file_mappings, release_unused_memory


class TokenIds(Sequence):
    """Token ids of every example, flat: example i is `values[offsets[i]:offsets[i + 1]]` of its chunk, as a
    numpy view. Built from the tokenizer's lists (one chunk) or from the chunks of a tokenised Arrow column,
    whose value buffers stay memory-mapped: a million examples are a few arrays, not a million Python lists."""

    RELEASE_EVERY = 64
    """Examples read from a memory-mapped file between two drops of its pages from the process (`release_pages`)."""

    def __init__(self, chunks: list[tuple[np.ndarray, np.ndarray]], mappings: list[tuple[int, int]] | None = None):
        self.chunks = [(values, np.asarray(offsets)) for values, offsets in chunks]  # int32 or int64: not copied
        self.starts = np.cumsum([0] + [len(o) - 1 for _, o in self.chunks], dtype=np.int64)
        self.mappings = mappings or []
        """The read-only file mappings the arrays are views of (`core.heap.read_only_file_mappings`; the arrays
        keep them mapped): reading rows maps their pages into the process, so every `RELEASE_EVERY` rows read they
        are dropped again (`core.heap.drop_resident_pages`) and the process's memory does not grow with the file."""
        self._reads = 0

    @classmethod
    def from_lists(cls, seqs: list[list[int]], dtype=np.int32) -> TokenIds:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(offsets[-1]))
        return cls([(values, offsets)])

    @classmethod
    def from_arrow(cls, column) -> TokenIds:
        """A tokenised Arrow column (list of integers, a ChunkedArray): its value buffers viewed, not copied."""
        chunks = []
        for chunk in column.chunks:
            if len(chunk):
                chunks.append((chunk.values.to_numpy(zero_copy_only=False), chunk.offsets.to_numpy()))
        return cls(chunks, read_only_file_mappings([a for pair in chunks for a in pair]))

    def release_pages(self) -> None:
        """Drop the pages of the memory-mapped file this reads from out of the process's resident memory (they stay
        in the page cache); nothing for ids held in memory."""
        self._reads = 0
        drop_resident_pages(self.mappings)

    def __getstate__(self) -> dict:
        """Pickled or deep-copied, the arrays become the copy's own memory, where the mapping addresses mean
        nothing (dropping pages there would zero them): the copy has none."""
        return self.__dict__ | {"mappings": [], "_reads": 0}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        values, offsets = self.chunks[c]
        j = i - int(self.starts[c])
        if self.mappings:
            self._reads += 1
            if self._reads >= self.RELEASE_EVERY:
                self.release_pages()
        return values[offsets[j]:offsets[j + 1]]

    def __iter__(self):
        for values, offsets in self.chunks:
            for j in range(len(offsets) - 1):
                yield values[offsets[j]:offsets[j + 1]]

    @property
    def lengths(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.diff(o) for _, o in self.chunks])


@dataclass
class Encoded:
    """Token ids per example (unpadded, `TokenIds`) and the targets; what the batches are cut from."""

    input_ids: TokenIds
    token_type_ids: TokenIds | None
    targets: np.ndarray  # int64 class ids, or float32 multi-hot rows
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return self.input_ids.lengths

    def release_pages(self) -> None:
        """Drop the pages of a memory-mapped token file from the process (`TokenIds.release_pages`)."""
        for ids in (self.input_ids, self.token_type_ids):
            if ids is not None:
                ids.release_pages()


def _tokenise(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> tuple[dict, list[bool]]:
    """The fast tokenizer in one batched call, and per example whether truncation cut it."""
    kwargs = dict(truncation=True, max_length=max_length, padding=False)
    enc = tokenizer(texts, pairs, **kwargs) if pairs is not None else tokenizer(texts, **kwargs)
    # Only an example that fills max_length can have been cut: re-tokenise just those, untruncated, to count.
    full_length = [i for i, a in enumerate(enc["input_ids"]) if len(a) >= max_length]
    cut = [False] * len(texts)
    if full_length:
        some = [texts[i] for i in full_length]
        quiet = dict(truncation=False, padding=False, verbose=False)  # no "longer than model_max_length" warning
        full = tokenizer(some, [pairs[i] for i in full_length], **quiet) if pairs is not None \
            else tokenizer(some, **quiet)
        for i, a in zip(full_length, full["input_ids"], strict=True):
            cut[i] = len(a) > max_length
    return enc, cut


ENCODE_ROWS = 1024
"""Texts tokenised per call by `encode`. The tokenizer's output for a call (Python lists of ids, its own per-text
encodings) is many times the size of the ids kept, so a slice at a time keeps it to a few MB however many texts are
given (a prediction chunk, a pool to embed)."""


def encode(tokenizer, texts: list[str], pairs: list[str] | None, targets, max_length: int) -> Encoded:
    """Tokenise texts given as lists (prediction, embeddings), `ENCODE_ROWS` at a time; count the examples that
    truncation cut."""
    ids, types, truncated = [], [], 0
    for start in range(0, len(texts), ENCODE_ROWS):
        part = slice(start, start + ENCODE_ROWS)
        enc, cut = _tokenise(tokenizer, texts[part], pairs[part] if pairs is not None else None, max_length)
        ids += TokenIds.from_lists(enc["input_ids"]).chunks
        tt = enc.get("token_type_ids")
        types += TokenIds.from_lists(tt, np.int8).chunks if tt is not None else [None]
        truncated += sum(cut)
        del enc  # before the next slice is tokenised
    has_types = bool(types) and all(t is not None for t in types)
    return Encoded(TokenIds(ids), TokenIds(types) if has_types else None, np.asarray(targets), truncated)


PARALLEL_ROWS = 50_000
"""From this many rows a memory-mapped split is tokenised by worker processes (`datasets.map(num_proc=...)`, at
least 2): below, a pool costs more than it saves; above, the workers also keep what tokenising leaves allocated
(about 700 bytes a row in the process that does it) out of the training process."""


def tokenizer_identity(tokenizer) -> str:
    """A hash of what the tokenizer does (its whole definition and special tokens): the key of cached
    tokenised splits, so another tokenizer never reuses them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256((backend.to_str() if backend is not None else repr(tokenizer)).encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()[:16]


def encode_dataset(tokenizer, ds, target: str, max_length: int, desc: str = "tokenising") -> Encoded:
    """A split (`datasets.Dataset` with `text`, maybe `text_pair`, and `target`) tokenised with `datasets.map`:
    batch by batch into Arrow, cached next to a memory-mapped split (a rerun with the same tokenizer, limit and
    rows reads it back) and spread over processes for large splits. No list of every example's ids is built."""
    from datasets.utils import logging as hf_logging

    pairs = "text_pair" in ds.column_names
    stored = bool(ds.cache_files)
    num_proc = max(2, min(os.cpu_count() or 1, 4)) if stored and len(ds) >= PARALLEL_ROWS else None

    def tokenise(batch: dict) -> dict:
        enc, cut = _tokenise(tokenizer, batch["text"], batch["text_pair"] if pairs else None, max_length)
        out = {"input_ids": enc["input_ids"], "cut": cut, "target": batch[target]}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    key = f"{ds._fingerprint}|{tokenizer_identity(tokenizer)}|{max_length}|{target}|v2"
    key = hashlib.sha256(key.encode()).hexdigest()
    quiet = len(ds) < PARALLEL_ROWS and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        tokens = ds.map(tokenise, batched=True, batch_size=2000, remove_columns=ds.column_names,
                        new_fingerprint=key[:32], keep_in_memory=not stored, num_proc=num_proc, desc=desc)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()
    table = tokens.data
    tt = table.column("token_type_ids") if "token_type_ids" in table.column_names else None
    # the targets come out of the map with the ids: indexing a split that selects rows of a larger file would
    # gather its rows one slice each (datasets' fast_gather: ~500 bytes a row that stay allocated)
    targets = table.column("target")
    targets = np.asarray(targets.to_pylist() if pa_types.is_list(targets.type) else targets.to_numpy())
    import pyarrow.compute as pc

    truncated = int(pc.sum(table.column("cut")).as_py() or 0)
    encoded = Encoded(TokenIds.from_arrow(table.column("input_ids")),
                      TokenIds.from_arrow(tt) if tt is not None else None, targets, truncated)
    if stored:
        release_unused_memory()  # gathering the map's shards freed much; the heap keeps it
        encoded.release_pages()  # reading the targets and counts mapped much of the token file into the process
    return encoded


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                           group_by_length: bool = True, mega: int = 50,
                           classes: np.ndarray | None = None) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled; with grouping, sorted by length inside mega-batches of
    `mega` batches, then the batch order shuffled again. Deterministic in (seed, epoch).

    With `classes` (one class id per example), the epoch is drawn class-balanced instead: the same number of
    examples, each class equally likely, examples of rare classes repeated (with replacement)."""
    return [b.tolist() for b in length_grouped_arrays(lengths, batch_size, seed, epoch, group_by_length, mega,
                                                       classes)]


def length_grouped_arrays(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                          group_by_length: bool = True, mega: int = 50,
                          classes: np.ndarray | None = None) -> list[np.ndarray]:
    """`length_grouped_batches` as int64 arrays, views of one permutation of the examples: an epoch of a million
    examples is a few megabytes, not a Python int per example."""
    rng = np.random.default_rng([seed, epoch])
    if classes is not None:
        counts = np.bincount(classes)
        weights = 1.0 / counts[classes]
        order = rng.choice(len(lengths), size=len(lengths), replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(len(lengths))
    if group_by_length:
        span = batch_size * mega
        chunks = [order[i:i + span] for i in range(0, len(order), span)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    order = order.astype(np.int64, copy=False)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation/prediction batches: longest first, so padding is minimal and a memory error shows early."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_batch: int = 512) -> list[list[int]]:
    """Longest first, each batch at most `max_tokens` padded tokens (and `max_batch` examples): many short texts
    in one batch (fewer, larger matmuls), few long ones (bounded activation memory)."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order.tolist():
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        if not current:
            width = max(int(lengths[i]), 1)  # sorted longest first: the first example sets the batch's width
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_chunks(lengths: np.ndarray, overhead: int) -> list[list[int]]:
    """Split one batch (positions 0..n-1 with these lengths) into length-sorted chunks that run one after the
    other: the split that minimises padded tokens plus `overhead` token-equivalents per chunk (the fixed cost of
    one more forward pass), found exactly by dynamic programming over the sorted lengths (O(n^2); batches are
    small). A batch of 16 SST-2 phrases (13 tokens on average) is padded to its longest, about 40: chunks cut
    the computed tokens by half or more, and a loss over the whole batch stays the same."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    sorted_len = np.asarray(lengths)[order].astype(np.int64)
    n = len(order)
    best = np.zeros(n + 1, dtype=np.int64)  # best[j]: cost of the first j sorted examples
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        starts = np.arange(j)
        costs = best[:j] + (j - starts) * sorted_len[j - 1] + overhead  # chunk starts..j-1, padded to the longest
        cut[j] = int(costs.argmin())
        best[j] = costs[cut[j]]
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j].tolist())
        j = int(cut[j])
    return chunks[::-1]


CACHE_BATCH_TOKENS = 2048


def prefix_batches(enc: Encoded, pad_id: int, input_names: list[str]):
    """(indices, model inputs) of the frozen-prefix cache pass, longest first. At most 2,048 padded tokens (and 64
    examples) a batch: the activation memory of a training batch, not twice it."""
    collate = Collator(enc, pad_id)
    for idx in token_budget_batches(enc.lengths, CACHE_BATCH_TOKENS, max_batch=64):
        b = collate(idx)
        yield idx, {k: b[k] for k in input_names if k in b}


def probe_batch(enc: Encoded, pad_id: int, input_names: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs of a few examples (the longest and the shortest among them, so padding is in it) on which
    `FrozenPrefixCache.prepare` tries the model before the cache pass."""
    lengths = np.asarray(enc.lengths)
    idx = list(dict.fromkeys([int(lengths.argmax()), int(lengths.argmin()), *range(min(2, len(lengths)))]))
    b = Collator(enc, pad_id)(idx)
    return {k: b[k] for k in input_names if k in b}


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


class BatchPlan(torch.utils.data.Sampler):
    """A batch sampler over `length_grouped_batches` (training) or `sorted_batches` (evaluation).

    Set `epoch` before iterating; Accelerate shards each batch across processes (`split_batches`), so the
    global batch stays the same whatever the process count.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True,
                 group_by_length: bool = True, classes: np.ndarray | None = None):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.group_by_length = shuffle, group_by_length
        self.classes = classes
        """Class id per example for a class-balanced epoch (training.balanced_sampler), else None."""
        self.drop_last = False
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """The epoch's batches as lists of example indices (`batch_arrays`, converted)."""
        return [b.tolist() for b in self.batch_arrays()]

    def batch_arrays(self) -> list[np.ndarray]:
        """The epoch's batches as int64 index arrays (what the training loop holds for an epoch)."""
        if not self.shuffle:
            return [np.asarray(b, dtype=np.int64) for b in sorted_batches(self.lengths, self.batch_size)]
        return length_grouped_arrays(self.lengths, self.batch_size, self.seed, self.epoch, self.group_by_length,
                                     classes=self.classes)

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return steps_per_epoch(len(self.lengths), self.batch_size)


class Collator:
    """Pad a list of example indices into a batch dict of tensors (dynamic padding)."""

    def __init__(self, data: Encoded, pad_id: int, with_index: bool = False, features: list | None = None):
        self.data = data
        self.pad_id = pad_id
        self.with_index = with_index
        self.features = features
        """Cached frozen-prefix outputs per example (see features.py), served as `prefix`."""

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        seqs = [self.data.input_ids[i] for i in indices]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.data.token_type_ids is not None:
            tt = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, i in enumerate(indices):
                t = self.data.token_type_ids[i]
                tt[row, : len(t)] = torch.tensor(t, dtype=torch.long)
            batch["token_type_ids"] = tt
        batch["targets"] = torch.as_tensor(self.data.targets[indices])
        if self.features is not None:
            from textxfer.backbones.prefix_cache import pad_features

            batch["prefix"] = pad_features([self.features[i] for i in indices])
        if self.with_index:
            batch["index"] = torch.as_tensor(indices, dtype=torch.long)
        return batch
