"""The per-example outputs of a frozen-prefix cache as views of one flat tensor, made one at a time: what a cache
mapped from its disk copy serves (a list of a million views would itself be hundreds of MB)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class FlatFeatures(Sequence):
    """Per-example cached outputs as views of one flat (tokens x hidden) tensor: example i is
    `flat[offsets[i]:offsets[i + 1]]`, made when a batch asks for it (no list of a view per example)."""

    def __init__(self, flat: torch.Tensor, offsets: np.ndarray):
        self.flat, self.offsets = flat, np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        return self.flat[int(self.offsets[i]):int(self.offsets[i + 1])]

    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()
