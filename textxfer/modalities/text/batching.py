"""Tokenise once, then batch with little padding.

Short texts padded to the longest of a random batch waste most of the compute (SST-2 phrases: 13 tokens on
average, padded to 39). Length-grouped batches keep the order random across batches but put texts of similar
length together; padding is dynamic (to the longest in the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Encoded:
    """Token ids per example (unpadded) and the targets; what the batches are cut from."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    targets: np.ndarray  # int64 class ids, or float32 multi-hot rows
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, texts: list[str], pairs: list[str] | None, targets, max_length: int) -> Encoded:
    """Tokenise with the fast tokenizer in one batched call; count the examples that truncation cut."""
    kwargs = dict(truncation=True, max_length=max_length, padding=False)
    enc = tokenizer(texts, pairs, **kwargs) if pairs is not None else tokenizer(texts, **kwargs)
    # Only an example that fills max_length can have been cut: re-tokenise just those, untruncated, to count.
    full_length = [i for i, a in enumerate(enc["input_ids"]) if len(a) >= max_length]
    truncated = 0
    if full_length:
        some = [texts[i] for i in full_length]
        quiet = dict(truncation=False, padding=False, verbose=False)  # no "longer than model_max_length" warning
        full = tokenizer(some, [pairs[i] for i in full_length], **quiet) if pairs is not None \
            else tokenizer(some, **quiet)
        truncated = sum(len(a) > max_length for a in full["input_ids"])
    tt = enc.get("token_type_ids")
    return Encoded(list(enc["input_ids"]), list(tt) if tt is not None else None,
                   np.asarray(targets), truncated)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                           group_by_length: bool = True, mega: int = 50,
                           classes: np.ndarray | None = None) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled; with grouping, sorted by length inside mega-batches of
    `mega` batches, then the batch order shuffled again. Deterministic in (seed, epoch).

    With `classes` (one class id per example), the epoch is drawn class-balanced instead: the same number of
    examples, each class equally likely, examples of rare classes repeated (with replacement)."""
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
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
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
        if not self.shuffle:
            return sorted_batches(self.lengths, self.batch_size)
        return length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.group_by_length,
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
