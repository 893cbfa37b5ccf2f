"""Never recompute what is frozen: cache the output of the frozen embeddings + lower layers.

When the embeddings and the lower N layers are frozen (strategies head, freeze, lora on the upper layers),
their output for an example never changes. It is computed once (eval mode, inference mode, sorted batches,
no padding waste) and kept per example, unpadded. Training then swaps the frozen modules out of the model:
the embeddings module returns the cached tensor of the batch, the frozen layers pass their input through,
and the model's own forward does the rest, masks included; so the upper layers see exactly what they would
have seen. When the whole body is frozen and the head reads only position 0 (every BERT-family classifier;
tried on a few examples first), only that position is kept: the head then trains on one vector per example.
A disk copy keyed by the frozen weights, the layer index and the token ids lets a later run (or
another strategy with the same frozen part) skip even the first pass.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash
from torch import nn

from textxfer.backbones.flat_features import FlatFeatures
from textxfer.backbones.load import Parts
from textxfer.core.environment import feature_cache_dir
from textxfer.core.precision import autocast_dtype
from textxfer.core.progress import ProgressReport
from textxfer.core.tensor_files import map_safetensors, write_safetensors

log = logging.getLogger("textxfer")

# Modules applied in sequence between the embeddings and the first layer: skipped when the cache is used.
SEQUENTIAL_EXTRAS = ("embeddings_project", "encoder.embedding_hidden_mapping_in")
PRIMARY = ("embeddings", "embedder", "conv_stem")


@dataclass(frozen=True)
class Share:
    """The processes of one run that split a cache pass between them: process `rank` of `world` computes every
    `world`-th batch, and all of them receive the whole, so N processes compute one cache, not N copies."""

    rank: int
    world: int

    def combine(self, mine: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Every process's {example index: output}, gathered on each process, in index order."""
        from accelerate.utils import gather_object

        whole: dict[int, torch.Tensor] = {}
        for part in gather_object([mine]):
            whole.update(part)
        if sorted(whole) != list(range(len(whole))):
            raise RuntimeError(f"frozen-prefix cache: the processes' shares cover {len(whole)} examples with gaps")
        return [whole[i] for i in range(len(whole))]

    def everyone(self, flag: bool) -> bool:
        """Whether `flag` holds on every process (one decision for all, so none waits on a gather alone)."""
        from accelerate.utils import gather_object

        return all(gather_object([flag]))


class _Stop(Exception):
    """Raised by a hook once the frozen prefix has run: the upper layers are not needed for the cache."""


class CachedInput(nn.Module):
    """Stands in for the embeddings: returns the cached frozen-prefix output of the current batch."""

    def __init__(self):
        super().__init__()
        self.current: torch.Tensor | None = None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.current is None:
            raise RuntimeError("frozen-prefix cache: no cached batch was set before the forward pass")
        return self.current


class PassThrough(nn.Module):
    """Stands in for a frozen layer whose output is already in the cache."""

    def __init__(self, tuple_len: int = 0):
        super().__init__()
        self.tuple_len = tuple_len

    def forward(self, hidden_states, *args, **kwargs):
        if self.tuple_len:
            return (hidden_states,) + (None,) * (self.tuple_len - 1)
        return hidden_states


def cut_to_first(layer: torch.nn.Module):
    """A hook that keeps position 0 alone of the output of the layer's `attention` block, so the layer's
    feed-forward runs on that position only (its attention still reads every position); its handle, or None where
    the layer has no such block. Callers check that position 0 comes out unchanged before relying on it."""
    block = dict(layer.named_children()).get("attention")
    if block is None:
        return None

    def first(module, args, out):
        return (out[0][:, :1],) + tuple(out[1:]) if isinstance(out, tuple) else out[:, :1]
    return block.register_forward_hook(first)


def first_position(batch: dict) -> dict:
    """The batch's inputs cut to the sequence's first position."""
    return {k: v[:, :1] for k, v in batch.items()}


def why_not(root: nn.Module, parts: Parts, frozen_prefix: int, min_layers: int = 0) -> str | None:
    """None when caching is exact (and worth it) for this model and strategy; else the reason it is not used.

    `min_layers` 1 for text: with the embeddings alone frozen (LoRA on every layer, freeze_layers 0) the cache
    would hold a hidden vector per token to skip only a table lookup and a layer norm per step: more memory for
    no speed."""
    if frozen_prefix < 0:
        return "the embeddings train (strategy full)"
    if frozen_prefix < min_layers:
        return "only the embeddings are frozen: recomputing them costs less than holding their output"
    if parts.shared_layers:
        return "ALBERT shares its layer weights across depths"
    conv = getattr(getattr(getattr(root, getattr(root, "base_model_prefix", ""), None), "encoder", None), "conv", None)
    if conv is not None and frozen_prefix > 0:
        return "DeBERTa-v2's convolution after layer 0 reads the embeddings"
    if not any(p.rsplit(".", 1)[-1] in PRIMARY for p in parts.embeddings):
        return "no embeddings module to stand in for"
    for name, p in root.named_parameters():
        g = parts.group_of(name)
        frozen_group = g == "embeddings" or (g.startswith("layer.") and int(g.split(".")[1]) < frozen_prefix)
        if frozen_group and p.requires_grad:
            return f"{name} is in the frozen part but trains"
    return None


class FrozenPrefixCache:
    """Compute, keep, and serve the frozen-prefix output of every example of the splits read while training
    (`CACHED_SPLITS`)."""

    def __init__(self, root: nn.Module, parts: Parts, frozen_prefix: int, store_dtype: torch.dtype = torch.float32,
                 autocast_dtype: torch.dtype | None = None):
        self.root, self.parts, self.k = root, parts, frozen_prefix
        self.store_dtype, self.autocast_dtype = store_dtype, autocast_dtype
        self.primary = next(p for p in parts.embeddings if p.rsplit(".", 1)[-1] in PRIMARY)
        self.slot = CachedInput()
        self.swapped: list[tuple[str, nn.Module]] = []
        self.tuple_len: int | None = None
        """How many outputs a layer returns in a tuple (0: a bare tensor); learnt on the first batch."""
        self.first_only = False
        """Keep only position 0 of each example: set by `prepare` when the head reads nothing else."""
        self.cut_last = False
        """The last cached layer's feed-forward runs on position 0 alone (`prepare` checked it is exact)."""

    # -- keys
    def frozen_hash(self) -> str:
        """Hash of the frozen weights and buffers (so a changed checkpoint never reuses a stale cache). xxh3-128
        runs at memory speed, and a cache key needs to tell checkpoints apart, not to resist an attacker."""
        h = xxhash.xxh3_128(f"{type(self.root).__name__}|{self.k}|{self.store_dtype}|{self.autocast_dtype}|"
                           f"{self.first_only}".encode())
        for path in self.parts.embeddings + self.parts.layers[: self.k]:
            for name, t in sorted(self.root.get_submodule(path).state_dict().items()):
                h.update(name.encode())
                # hashed in place (no bytes copy: the word embeddings alone are ~50 MB of a small model's peak)
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy()
                         if t.is_floating_point() else np.ascontiguousarray(t.cpu().numpy()))
        return h.hexdigest()

    @staticmethod
    def data_hash(encoded) -> str:
        h = hashlib.sha256()
        for seq in encoded.input_ids:
            h.update(np.asarray(seq, dtype=np.int32).tobytes())
            h.update(b"|")
        if encoded.token_type_ids is not None:
            for seq in encoded.token_type_ids:
                h.update(np.asarray(seq, dtype=np.int8).tobytes())
        return h.hexdigest()

    # -- computing
    def _capture(self, store: dict):
        layers = self.parts.layers
        if self.k == 0:
            def pre(module, args, kwargs):
                store["out"] = args[0] if args else kwargs["hidden_states"]
                raise _Stop
            return self.root.get_submodule(layers[0]).register_forward_pre_hook(pre, with_kwargs=True)

        def post(module, args, out):
            store["out"] = out[0] if isinstance(out, tuple) else out
            raise _Stop
        return self.root.get_submodule(layers[self.k - 1]).register_forward_hook(post)

    def _record_layer_output_type(self, batch: dict) -> None:
        seen = {}

        def hook(module, args, out):
            seen["len"] = len(out) if isinstance(out, tuple) else 0
            raise _Stop
        handle = self.root.get_submodule(self.parts.layers[0]).register_forward_hook(hook)
        try:
            self.root(**batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        self.tuple_len = seen.get("len", 0)

    def _prefix_output(self, batch: dict) -> torch.Tensor:
        """The cached layers' output for one batch (the model stops there)."""
        store: dict = {}
        handle = self._capture(store)
        try:
            with torch.autocast(next(iter(batch.values())).device.type, dtype=self.autocast_dtype,
                                enabled=self.autocast_dtype is not None):
                self.root(**batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        return store["out"]

    def _cut_to_first(self):
        """While only position 0 is kept: the last cached layer's feed-forward runs on position 0 alone (its
        attention still reads every position). A hook cuts the output of the layer's `attention` block; about a
        ninth of a 6-layer pass. None where the layer has no such block."""
        return cut_to_first(self.root.get_submodule(self.parts.layers[self.k - 1]))

    @torch.inference_mode()
    def prepare(self, batch: dict, device: torch.device) -> None:
        """Before the pass, on a few examples: learn what the layers return and, when every layer below the head
        is cached, whether the head reads only position 0 of the sequence (every BERT-family classifier does,
        and so does the mean-pooling layer's output). Then only that position is kept: 1/length of the memory,
        and training runs the head alone; and the last layer's feed-forward runs on that position only. Both are
        tried, not assumed: the logits from the whole cached sequence and from its first position, and the last
        layer's position 0 with and without the cut, must agree."""
        batch = {k: v.to(device) for k, v in batch.items()}
        self._record_layer_output_type(batch)
        self.first_only = self.cut_last = False
        if self.k < len(self.parts.layers) or self.k == 0:
            return
        was_training = self.root.training
        self.root.eval()
        try:
            whole_out = self._prefix_output(batch)
            self.install()
            try:
                self.slot.current = whole_out.float()
                whole = self.root(**batch).logits
                self.slot.current = whole_out[:, :1].float()
                first = self.root(**first_position(batch)).logits
                self.first_only = bool(torch.allclose(whole, first, rtol=1e-6, atol=1e-6))
            except Exception:  # a head that needs the whole sequence: keep all of it
                self.first_only = False
            finally:
                self.uninstall()
            handle = self._cut_to_first() if self.first_only else None
            if handle is not None:
                try:
                    cut = self._prefix_output(batch)
                except Exception:
                    cut = None
                finally:
                    handle.remove()
                want = whole_out[:, :1]
                self.cut_last = cut is not None and cut.shape == want.shape and bool(
                    torch.allclose(cut.float(), want.float(), rtol=1e-4, atol=1e-4 * float(want.abs().max())))
        finally:
            self.root.train(was_training)

    def inputs(self, batch: dict) -> dict:
        """The model inputs that go with a batch of cached features (position 0 alone when that is all kept)."""
        return first_position(batch) if self.first_only else batch

    @torch.inference_mode()
    def compute(self, batches, device: torch.device, lengths: np.ndarray | None = None,
                share: Share | None = None, total: int | None = None) -> list[torch.Tensor]:
        """Per-example prefix outputs (unpadded along the sequence), from (indices, batch dict) pairs. With a
        `share` of several processes, each computes every N-th batch and all receive the whole. `total`: the
        number of examples (default: that of `lengths`), for the progress the main process shows.

        With the examples' token counts (`lengths`), the outputs are written straight into one flat
        (tokens x hidden) tensor and returned as views of it: no per-example copies, and the disk copy is written
        from it without concatenating (peak memory holds the features once, not twice)."""
        if share is not None and share.world > 1:
            mine = [batch for b, batch in enumerate(batches) if b % share.world == share.rank]
            return share.combine(self.compute_indexed(mine, device))
        was_training = self.root.training
        self.root.eval()
        out: dict[int, torch.Tensor] = {}
        kept = None if lengths is None else np.ones_like(lengths) if self.first_only else lengths
        offsets = np.concatenate([[0], np.cumsum(kept)]) if kept is not None else None
        flat: torch.Tensor | None = None
        cut = self._cut_to_first() if self.cut_last else None
        total = total if total is not None else len(lengths) if lengths is not None else None
        shown = ProgressReport("frozen-prefix cache", total, "examples")
        try:
            for indices, batch in shown.track(batches, lambda item: len(item[0])):
                batch = {k: v.to(device) for k, v in batch.items()}
                if self.tuple_len is None:  # `prepare` learnt it already where it ran
                    self._record_layer_output_type(batch)
                hidden = self._prefix_output(batch).to(self.store_dtype).cpu()
                mask = batch.get("attention_mask")
                if offsets is not None and mask is not None and hidden.dim() == 3:
                    if flat is None:
                        flat = torch.empty((int(offsets[-1]), hidden.shape[-1]), dtype=self.store_dtype)
                    for row, i in enumerate(indices):
                        n = int(lengths[i])
                        if int(mask[row].sum()) != n:
                            raise RuntimeError(f"frozen-prefix cache: example {i} has {int(mask[row].sum())} "
                                               f"tokens in its batch but length {n}")
                        flat[offsets[i]:offsets[i + 1]] = hidden[row, :int(kept[i])]
                    continue
                for row, i in enumerate(indices):
                    n = int(mask[row].sum()) if mask is not None and hidden.dim() == 3 else None
                    n = 1 if self.first_only and n is not None else n
                    out[i] = hidden[row, :n].clone() if n is not None else hidden[row].clone()
        finally:
            shown.close()
            if cut is not None:
                cut.remove()
            self.root.train(was_training)
        if flat is not None:
            return [flat[offsets[i]:offsets[i + 1]] for i in range(len(kept))]
        return [out[i] for i in sorted(out)]

    def compute_indexed(self, batches, device: torch.device) -> dict[int, torch.Tensor]:
        """{example index: prefix output} for the examples of `batches` (a share of a split)."""
        batches = list(batches)
        order = [i for indices, _ in batches for i in indices]
        feats = self.compute(iter(batches), device, total=len(order))
        return dict(zip(sorted(order), feats, strict=True))

    # -- disk
    @staticmethod
    def cache_dir() -> Path:
        return feature_cache_dir()

    @staticmethod
    def _read(path: Path, key: str, said: bool = True) -> FlatFeatures | None:
        """The per-example outputs stored at `path` under `key`, memory-mapped (pages are read as batches touch
        them: page cache, not process memory); None (with a warning) if unreadable or foreign. `said`: log it."""
        try:
            data = map_safetensors(path)
            flat, offsets = data["flat"], data["offsets"].numpy()
            if data["key"].numpy().tobytes().decode() != key:
                raise ValueError("key mismatch")
            if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != flat.shape[0] or (np.diff(offsets) < 0).any():
                raise ValueError("offsets do not fit the stored features")
        except Exception as e:  # corrupt or foreign file: rebuild, never reuse
            log.warning(f"frozen-prefix cache: {path} unreadable ({e}); rebuilding it")
            return None
        if said:
            log.info(f"frozen-prefix cache: loaded {len(offsets) - 1} examples from {path} (memory-mapped)")
        return FlatFeatures(flat, offsets)

    def load_or_compute(self, key: str, batches_fn, device: torch.device, use_disk: bool,
                        lengths: np.ndarray | None = None, share: Share | None = None) -> Sequence[torch.Tensor]:
        """The cache of one split: read from disk under `key` where a readable copy is there (on every process of
        a `share`), else computed (split between the processes of a `share`) and, by the main process, written."""
        path = self.cache_dir() / f"{key}.safetensors"
        shared = share is not None and share.world > 1
        loaded = self._read(path, key) if use_disk and path.is_file() else None
        # one decision for all processes: one that must compute would otherwise wait alone in the shared pass
        if loaded is not None and (not shared or share.everyone(True)):
            return loaded
        if shared and loaded is None:
            share.everyone(False)
        feats = self.compute(batches_fn(), device, lengths, share)
        if share is not None and share.rank != 0:  # one copy on disk: the main process writes it
            return feats
        if use_disk and feats and feats[0].dim() == 2:
            offsets = np.cumsum([0] + [f.shape[0] for f in feats])
            base = feats[0]._base  # the flat tensor that compute(lengths=...) filled, if it did
            whole = base is not None and base.dim() == 2 and base.shape[0] == offsets[-1] and all(
                f._base is base for f in feats)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_safetensors(tmp, {"flat": base if whole else torch.cat(feats),
                                        "offsets": torch.as_tensor(offsets, dtype=torch.int64),
                                        "key": torch.frombuffer(bytearray(key.encode()), dtype=torch.uint8)})
                os.replace(tmp, path)
                mapped = self._read(path, key, said=False)  # served from the file: the computed copy is freed
                if mapped is not None:
                    return mapped
            except OSError as e:  # full disk or read-only home: carry on in memory
                log.warning(f"frozen-prefix cache: could not write {path} ({e}); keeping it in memory only")
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
        return feats

    # -- swapping modules
    def _set(self, path: str, module: nn.Module) -> nn.Module:
        parent_path, _, name = path.rpartition(".")
        parent = self.root.get_submodule(parent_path) if parent_path else self.root
        old = parent[int(name)] if isinstance(parent, nn.ModuleList) else getattr(parent, name)
        if isinstance(parent, nn.ModuleList):
            parent[int(name)] = module
        else:
            setattr(parent, name, module)
        return old

    def install(self) -> None:
        """Take the frozen modules out of the model; the cache serves their output."""
        if self.swapped:
            return
        self.swapped.append((self.primary, self._set(self.primary, self.slot)))
        for path in self.parts.embeddings:
            if any(path.endswith(x) for x in SEQUENTIAL_EXTRAS):
                self.swapped.append((path, self._set(path, nn.Identity())))
        for path in self.parts.layers[: self.k]:
            self.swapped.append((path, self._set(path, PassThrough(self.tuple_len or 0))))

    def uninstall(self) -> None:
        """Put the original modules back (before saving)."""
        for path, module in reversed(self.swapped):
            self._set(path, module)
        self.swapped.clear()
        self.slot.current = None


def pad_features(feats: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-example cached outputs into a batch, zero-padding the sequence dimension."""
    if all(f.shape == feats[0].shape for f in feats):
        return torch.stack(feats)
    return nn.utils.rnn.pad_sequence(feats, batch_first=True)


def cache_dtypes(t) -> tuple[torch.dtype, torch.dtype | None]:
    """(storage dtype, autocast dtype or None) of a frozen-prefix cache pass under these training settings."""
    store = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[t.cache_dtype]
    return store, autocast_dtype(t.mixed_precision)


CACHED_SPLITS = ("train", "validation")
"""The splits whose frozen-prefix outputs are cached: those read at every epoch. The test split is read once, after
training, by the whole model: caching it would only move that pass inside the training clock (`train_seconds`)
and make a cached strategy look slower than an uncached one in `textxfer compare`."""


def splits_to_cache(encoded: dict) -> dict:
    """The entries of `encoded` (split -> data) whose frozen-prefix outputs are cached (`CACHED_SPLITS`)."""
    return {split: data for split, data in encoded.items() if split in CACHED_SPLITS}
