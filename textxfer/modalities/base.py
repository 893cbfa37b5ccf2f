"""What a modality gives the training loop, and the steps the loop asks it for.

A modality (text, image) knows how its examples are read, encoded, batched and run through a model; the loop
knows nothing of tokens or pixels. The loop calls, in order:

  read(recipe, memory)           -> the splits (labels, notes, multi-label or not), nothing loaded yet
  load_model(recipe, path, splits) -> (classifier, its parts), seeded, before the strategy is applied
  encode(recipe, splits)         -> per split, the examples as `loader` batches them
  build_cache(loop)              -> a `Cached` frozen prefix, or None where caching is not exact
  loader(loop, split, train, bs) -> (batch plan, DataLoader)
  logits(loop, batch)            -> the model's logits for one batch
  fingerprints(loop), save_preprocessor(loop, folder)

Steps that take the loop read it; none assigns its attributes: what a step builds is returned (`Cached`) and the
loop keeps it. What a modality needs again later (a tokenizer, an image processor) it keeps itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Cached:
    """A frozen-prefix cache ready to install: the cache (it swaps the frozen layers for a lookup), the computed
    features per split, and the hash of the frozen weights that produced them (a resume must find the same)."""

    cache: Any
    features: dict[str, list]
    key: str
