"""Tensors to and from safetensors files without extra copies: written straight from the tensors' memory, read
back memory-mapped. Used by the frozen-prefix cache's disk copy and the best weights kept during training."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
                       torch.uint8: "U8"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written straight from the tensors' memory. `safetensors.torch.save_file` first turns
    every tensor into a bytes copy, which for the cache doubled the features' share of the peak memory."""
    header, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            t = t.detach().cpu().contiguous()
            f.write(memoryview(t.view(torch.uint8).numpy() if t.numel() else b""))


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, mapped from it (copy-on-write): pages are read when touched, so the
    tensors take page cache, not process memory, until used."""
    dtypes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = dtypes[meta["dtype"]]
        start, end = meta["data_offsets"]
        count = (end - start) // dtype.itemsize
        flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + start) if count else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(meta["shape"])
    return out
