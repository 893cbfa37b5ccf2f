"""Text as the training loop sees it: labelled texts read and tokenised, the classifier and its tokenizer, the
frozen-prefix cache over token states, length-grouped batches and the forward pass.

The loop calls these steps (`textxfer.modalities.base`) through the modality it was given
(`textxfer.modalities.detect.modality_of`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from textxfer.backbones.flat_features import FlatFeatures
from textxfer.backbones.load import (
    check_classifiable,
    input_names,
    load_classifier,
    load_config,
    unwrap_peft,
)
from textxfer.backbones.pooling import with_pooling_layer
from textxfer.backbones.prefix_cache import FrozenPrefixCache, Share, cache_dtypes, splits_to_cache, why_not
from textxfer.config.schema import Recipe
from textxfer.config.validate import cache_budget_bytes
from textxfer.core.errors import UserError
from textxfer.data.fingerprint import fingerprint
from textxfer.data.splits import Splits, load_splits
from textxfer.modalities.base import Cached
from textxfer.modalities.text.batching import (
    BatchPlan,
    Collator,
    Encoded,
    encode_dataset,
    prefix_batches,
    probe_batch,
)

log = logging.getLogger("textxfer")


POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "bart": 2, "mbart": 2}
"""Families whose position ids start after the padding index: `max_position_embeddings` minus this is the
longest input (RoBERTa: 514 positions, 512 tokens)."""


def check_max_length(config, max_length: int, name: str) -> None:
    """Refuse a `model.max_length` beyond the checkpoint's learnt positions (its forward pass would fail on the
    first long batch); models with relative positions only (DeBERTa-v2/v3) have no such limit."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or getattr(config, "position_biased_input", True) is False:
        return
    limit = positions - POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)
    if max_length > limit:
        raise UserError(f"`model.max_length` is {max_length}, but {name} has learnt positions for {limit} tokens. "
                        f"Set `model.max_length` to {limit} or less (longer texts are cut there).")


def build_tokenizer(name: str, recipe: Recipe):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, revision=recipe.model.revision,
                                            trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not load the tokenizer of `{name}`: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        raise UserError(f"The tokenizer of `{name}` has no padding token; textxfer needs one to batch texts.")
    return tok


class TextModality:
    """Texts (single or sentence pairs, single- or multi-label) for a sequence-classification model."""

    name = "text"

    def __init__(self) -> None:
        self.tokenizer = None
        self.input_names: list[str] = []

    def read(self, recipe: Recipe, memory: dict) -> Splits:
        """The recipe's splits (or those given from Python), labels fixed, missing splits carved."""
        return load_splits(recipe.data, recipe.training.seed, memory)

    def load_model(self, recipe: Recipe, path: str, splits: Splits):
        """The tokenizer (kept for encoding and saving) and a sequence classifier over the splits' labels."""
        from accelerate.utils import set_seed

        r = recipe
        config = load_config(path, r.model.revision, r.model.trust_remote_code)
        check_classifiable(config, r.model.name, "text")
        check_max_length(config, r.model.max_length, r.model.name)
        self.tokenizer = build_tokenizer(path, r)
        set_seed(r.training.seed)  # seeded right before the model is built: the new head is reproducible
        model, parts = load_classifier(path, splits.labels, multi_label=splits.multi_label, revision=r.model.revision,
                                       trust_remote_code=r.model.trust_remote_code, dropout=r.model.dropout)
        self.input_names = input_names(model)
        return model, parts

    def encode(self, recipe: Recipe, splits: Splits) -> dict[str, Encoded]:
        """Every split tokenised (cut at `model.max_length`), with the number cut logged."""
        encoded = {}
        limit = recipe.model.max_length
        for name, ds in splits.items():
            enc = encoded[name] = encode_dataset(self.tokenizer, ds, "labels" if splits.multi_label else "label",
                                                 limit, desc=f"tokenising {name}")
            log.info(f"{name}: {len(enc)} examples, {enc.truncated} ({100 * enc.truncated / len(enc):.1f}%) "
                     f"truncated at {limit} tokens")
        return encoded

    def build_cache(self, loop) -> Cached | None:
        """Frozen-prefix outputs of the splits used while training (`CACHED_SPLITS`), computed once (or read from
        disk); None where not exact."""
        r = loop.recipe
        if r.training.cache == "off":
            return None
        cache = self.new_cache(loop, loop.parts, loop.applied.frozen_prefix)
        if cache is None:
            return None
        size, budget = self.cache_bytes(loop, cache), cache_budget_bytes(r.training.cache_budget)
        n = sum(len(enc) for enc in splits_to_cache(loop.encoded).values())
        if budget is not None and size > budget:
            log.info(f"frozen-prefix cache: off: {n:,} examples would take {size / 1e9:.2f} GB, above "
                     f"training.cache_budget ({budget / 1e9:.2f} GB); the frozen layers run at every step")
            return None
        device = loop.acc.device
        weights_key = cache.frozen_hash()  # a resumed run must find the same frozen part (checkpoint.restore)
        share = Share(loop.acc.process_index, loop.acc.num_processes) if loop.acc.num_processes > 1 else None
        started = time.time()
        features = {}
        for split, enc in splits_to_cache(loop.encoded).items():
            key = hashlib.sha256(f"{weights_key}|{cache.data_hash(enc)}".encode()).hexdigest()[:32]
            batches = functools.partial(prefix_batches, enc, self.tokenizer.pad_token_id, self.input_names)
            features[split] = cache.load_or_compute(key, batches, device, use_disk=r.training.cache == "auto",
                                                    lengths=enc.lengths, share=share)
        above = ("the head alone, on position 0 (all it reads; the last layer's feed-forward computed it alone)"
                 if cache.cut_last else "the head alone, on position 0 (all it reads)" if cache.first_only
                 else "only the layers above")
        shared = f", shared by {share.world} processes" if share else ""
        held = (f"memory-mapped from its disk copy in {cache.cache_dir()}"
                if all(isinstance(f, FlatFeatures) for f in features.values()) else "held in memory")
        log.info(f"frozen-prefix cache: embeddings + {cache.k} layers computed once for "
                 f"{sum(len(f) for f in features.values())} examples in {time.time() - started:.1f}s{shared}; "
                 f"training runs {above}; {size / 1e9:.2f} GB, {held}")
        return Cached(cache, features, weights_key)

    @staticmethod
    def cache_bytes(loop, cache: FrozenPrefixCache) -> int:
        """What the cache of the training splits would take: every kept position's hidden vector (position 0
        alone where that is all the head reads) at the storage type."""
        hidden = getattr(getattr(unwrap_peft(loop.model), "config", None), "hidden_size", 0) or 0
        kept = sum(len(enc) if cache.first_only else int(enc.lengths.sum())
                   for enc in splits_to_cache(loop.encoded).values())
        return kept * int(hidden) * cache.store_dtype.itemsize

    def prefix_cache(self, loop, parts, k: int, splits: list[str]) -> Cached | None:
        """The output of the embeddings + lower k layers of `parts` for these splits, in memory only (weights a
        contrastive stage tuned are this run's own: a disk copy would never be reused); None where not exact."""
        started = time.time()
        cache = self.new_cache(loop, parts, k, where=" for the contrastive stage or after it")
        if cache is None:
            return None
        share = Share(loop.acc.process_index, loop.acc.num_processes) if loop.acc.num_processes > 1 else None
        features = {split: cache.compute(prefix_batches(loop.encoded[split], self.tokenizer.pad_token_id,
                                                        self.input_names), loop.acc.device, share=share,
                                  total=len(loop.encoded[split]))
                    for split in splits}
        n = sum(len(f) for f in features.values())
        log.info(f"frozen-prefix cache: embeddings + {cache.k} layers computed once for {n} examples "
                 f"({', '.join(splits)}) in {time.time() - started:.1f}s")
        # hashed before install() swaps the cached layers out of the model: the key covers the weights the stage
        # tuned, so a resume whose stage came out different (another recipe value, seed or machine) is refused
        return Cached(cache, features, cache.frozen_hash())

    def new_cache(self, loop, parts, k: int, where: str = "") -> FrozenPrefixCache | None:
        """A frozen-prefix cache of the embeddings + lower k layers of `parts` (with the whole body frozen, the
        fixed pooling layer too), tried on a few training examples (`FrozenPrefixCache.prepare`); None, with the
        reason logged, where caching is not exact or not worth it."""
        root = unwrap_peft(loop.model)
        if k == len(parts.layers):
            parts = with_pooling_layer(root, parts)
            k = len(parts.layers)
        reason = why_not(root, parts, k, min_layers=1)
        if reason:
            log.info(f"frozen-prefix cache: not used{where} ({reason})")
            return None
        cache = FrozenPrefixCache(root, parts, k, *cache_dtypes(loop.recipe.training))
        root.to(loop.acc.device)
        cache.prepare(probe_batch(loop.encoded["train"], self.tokenizer.pad_token_id, self.input_names),
                      loop.acc.device)
        return cache

    def loader(self, loop, split: str, train: bool, batch_size: int):
        """(batch plan, DataLoader) over one split: length-grouped (or class-balanced) batches of token ids, with
        the cached prefix outputs where the split has them."""
        r = loop.recipe
        enc = loop.encoded[split]
        balanced = train and r.training.balanced_sampler and not loop.splits.multi_label
        plan = BatchPlan(enc.lengths, batch_size, seed=r.training.seed, shuffle=train,
                         group_by_length=r.training.group_by_length,
                         classes=np.asarray(enc.targets, dtype=np.int64) if balanced else None)
        features = loop.features.get(split) if loop.features else None
        dl = torch.utils.data.DataLoader(range(len(enc)), batch_sampler=plan,
                                         collate_fn=Collator(enc, self.tokenizer.pad_token_id, with_index=True,
                                                             features=features),
                                         num_workers=r.training.num_workers)
        return plan, dl

    def logits(self, loop, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in self.input_names if k in batch}
        if loop.cache is not None:
            loop.cache.slot.current = batch["prefix"].to(loop.acc.device, torch.float32)
            inputs = loop.cache.inputs(inputs)
        return loop.model(**inputs).logits

    def fingerprints(self, loop) -> dict[str, str]:
        """Per split, a hash of its texts (and pairs) and labels."""
        return {split: fingerprint(ds) for split, ds in loop.splits.items()}

    def save_preprocessor(self, loop, folder: Path) -> None:
        """The tokenizer next to the model, saved with `model_max_length` set to the run's `model.max_length`, so
        `pipeline(..., truncation=True)` reads as many tokens as training did."""
        before = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = int(loop.recipe.model.max_length)
        try:
            self.tokenizer.save_pretrained(folder)
        finally:
            self.tokenizer.model_max_length = before
