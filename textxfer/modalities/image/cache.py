"""The frozen-prefix cache for vision models: the frozen stem + lower stages run once per image and their output
is stored; stand-ins then take the stem's and frozen stages' places, keeping the attributes the model's forward
reads. The cached forward is checked against the plain one on real images before it is trusted; when it does not
match (or cannot run), the run goes on without the cache and says why."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging

import torch
from torch import nn

from textxfer.backbones.load import unwrap_peft
from textxfer.backbones.prefix_cache import FrozenPrefixCache
from textxfer.modalities.base import Cached

log = logging.getLogger("textxfer")


class _Stop(Exception):
    pass


class _StandIn(nn.Module):
    """Replaces a frozen module; attribute reads fall through to it (ViT reads `embeddings.patch_embeddings`
    for the input dtype, Swin `layer.downsample`). The original is not a submodule: its weights stay out."""

    def __init__(self, original: nn.Module):
        super().__init__()
        object.__setattr__(self, "_original", original)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"], name)


class CachedStem(_StandIn):
    """The stem: returns the cached frozen-prefix output of the batch (with whatever else the stem returned,
    e.g. Swin's patch-grid size, which is the same for every image of a fixed size)."""

    def __init__(self, original: nn.Module, slot: nn.Module, extras: tuple):
        super().__init__(original)
        self.slot = slot
        self.extras = extras

    def forward(self, *args, **kwargs):
        out = self.slot(*args, **kwargs)
        return (out, *self.extras) if self.extras else out


class FrozenStage(_StandIn):
    """A frozen stage whose output is already in the cache: passes its input through."""

    def __init__(self, original: nn.Module, tuple_len: int):
        super().__init__(original)
        self.tuple_len = tuple_len

    def forward(self, hidden_states, *args, **kwargs):
        if self.tuple_len:
            return (hidden_states,) + (None,) * (self.tuple_len - 1)
        return hidden_states


class VisionPrefixCache(FrozenPrefixCache):
    """The frozen-prefix cache with stand-ins that keep what vision models read off their stem and stages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extras: tuple | None = None
        self.feature_shape: tuple[int, ...] | None = None
        """(C, H, W) of a CNN's cached feature map; kept as (C, H*W) rows, the layout backbones/prefix_cache.py stores on disk."""
        self.images: int | None = None
        """How many images the pass under way reads (`load_or_compute`), for its progress."""

    def _record_stem(self, batch: dict, device: torch.device) -> None:
        seen: dict = {}

        def hook(module, args, out):
            seen["extras"] = tuple(out[1:]) if isinstance(out, tuple) else ()
            raise _Stop
        handle = self.root.get_submodule(self.primary).register_forward_hook(hook)
        try:
            with torch.inference_mode():
                self.root(**{k: v[:1].to(device) for k, v in batch.items()})
        except _Stop:
            pass
        finally:
            handle.remove()
        extras = seen.get("extras", ())
        if any(isinstance(x, torch.Tensor) for x in extras):
            raise _Unsupported("its stem returns per-image tensors besides the features")
        self.extras = extras

    def compute(self, batches, device: torch.device, lengths=None, share=None) -> list[torch.Tensor]:
        """Per-image stem + frozen-stage outputs, flattened (`feature_shape` keeps their shape). Images are computed
        by every process alike (`share` is not taken: decoding them would be repeated on every process anyway)."""
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return []
        if self.extras is None:
            self._record_stem(first[1], device)
        feats = super().compute(itertools.chain([first], batches), device, total=self.images)
        if feats and feats[0].dim() == 3:
            self.feature_shape = tuple(feats[0].shape)
            feats = [f.reshape(f.shape[0], -1) for f in feats]
        return feats

    def load_or_compute(self, key: str, batches_fn, device: torch.device, use_disk: bool,
                        images: int | None = None) -> list[torch.Tensor]:
        self.images = images
        try:
            feats = super().load_or_compute(key, batches_fn, device, use_disk)
        finally:
            self.images = None
        return [f.reshape(self.feature_shape) for f in feats] if self.feature_shape else feats

    def install(self) -> None:
        if self.swapped:
            return
        stem = self.root.get_submodule(self.primary)
        self.swapped.append((self.primary, self._set(self.primary, CachedStem(stem, self.slot, self.extras or ()))))
        for path in self.parts.embeddings:
            if path != self.primary:
                self.swapped.append((path, self._set(path, nn.Identity())))
        for path in self.parts.layers[: self.k]:
            original = self.root.get_submodule(path)
            self.swapped.append((path, self._set(path, FrozenStage(original, self.tuple_len or 0))))

    def verify(self, pixel_values: torch.Tensor, device: torch.device) -> str | None:
        """None when the cached forward reproduces the plain forward's logits on these images; else why not.

        Exactness is checked in fp32, both forwards alike, whatever precision the run trains in (even on a model
        whose forward Accelerate wrapped in autocast): under bf16 both would round differently and hide or fake a
        difference."""
        from textxfer.core.precision import full_precision_forward

        was_training, dtype, autocast = self.root.training, self.store_dtype, self.autocast_dtype
        self.store_dtype, self.autocast_dtype = torch.float32, None
        pixel_values = pixel_values.to(device)
        with full_precision_forward(self.root):
            return self._verify(pixel_values, device, was_training, dtype, autocast)

    def _verify(self, pixel_values, device, was_training, dtype, autocast) -> str | None:
        try:
            self.root.eval()
            with torch.inference_mode():
                plain = self.root(pixel_values=pixel_values).logits.float()
            feats = self.compute([(list(range(len(pixel_values))), {"pixel_values": pixel_values})], device)
            self.install()
            shape = self.feature_shape
            self.slot.current = torch.stack([f.reshape(shape) if shape else f for f in feats]).to(device, torch.float32)
            with torch.inference_mode():
                cached = self.root(pixel_values=pixel_values[:, :, :1, :1]).logits.float()
        except _Unsupported as e:
            return str(e)
        except Exception as e:  # a forward this architecture cannot run with stand-ins: train without the cache
            return f"the model's forward does not run on cached features ({type(e).__name__}: {e})"
        finally:
            self.uninstall()
            self.root.train(was_training)
            self.store_dtype, self.autocast_dtype = dtype, autocast
        diff = (plain - cached).abs().max().item()
        if not diff <= 1e-4 * max(1.0, plain.abs().max().item()):
            return f"the cached forward differs from the plain one by {diff:.2e} on the same images"
        return None


class _Unsupported(Exception):
    pass


def build_cache(loop, transforms, processor) -> Cached | None:
    """Frozen-prefix outputs of every image of the splits read while training (computed once, or read from
    disk), or None."""
    import time

    from textxfer.backbones.prefix_cache import splits_to_cache, why_not

    r = loop.recipe
    if r.training.cache == "off":
        return None
    if r.data.augment:
        log.info("frozen-prefix cache: not used (data.augment is true: every epoch sees new crops)")
        return None
    root = unwrap_peft(loop.model)
    reason = why_not(root, loop.parts, loop.applied.frozen_prefix)
    if reason:
        log.info(f"frozen-prefix cache: not used ({reason})")
        return None
    from textxfer.backbones.prefix_cache import cache_dtypes

    cache = VisionPrefixCache(root, loop.parts, loop.applied.frozen_prefix, *cache_dtypes(r.training))
    device = loop.acc.device
    root.to(device)
    train = loop.encoded["train"]
    probe_idx = list(range(min(4, len(train))))
    reason = cache.verify(transforms.eval([train.load(i) for i in probe_idx]), device)
    if reason:
        log.info(f"frozen-prefix cache: not used ({reason})")
        return None
    started = time.time()
    weights = cache.frozen_hash()  # a resumed run must find the same frozen part (checkpoint.restore)
    pre = json.dumps(processor.to_dict(), sort_keys=True, default=str)
    features = {}
    # channels-last convolutions: about a quarter less CPU time for the one pass (same function, float rounding)
    fmt = torch.channels_last
    root.to(memory_format=fmt)
    try:
        for split, data in splits_to_cache(loop.encoded).items():  # not the test split: the whole model scores it
            key = hashlib.sha256(f"image|{weights}|{pre}|{data.content_hash()}".encode()).hexdigest()[:32]

            def batches(data=data):
                for start in range(0, len(data), 32):
                    idx = list(range(start, min(start + 32, len(data))))
                    pixels = transforms.eval([data.load(i) for i in idx])
                    yield idx, {"pixel_values": pixels.contiguous(memory_format=fmt)}
            features[split] = cache.load_or_compute(key, batches, device, use_disk=r.training.cache == "auto",
                                                    images=len(data))
    finally:
        root.to(memory_format=torch.contiguous_format)
    log.info(f"frozen-prefix cache: stem + {loop.applied.frozen_prefix} of {len(loop.parts.layers)} stages computed "
             f"once for {sum(len(f) for f in features.values())} images in {time.time() - started:.1f}s; training "
             "runs only the stages above")
    return Cached(cache, features, weights)
