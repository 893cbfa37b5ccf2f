"""Which floating-point precision a run computes in, decided in one place.

`training.mixed_precision: auto` means bf16 autocast where this machine computes bf16 natively (a GPU with bf16;
a CPU with AMX or AVX512-BF16) and fp32 elsewhere: without native support torch emulates bf16 matmuls, which is
correct but several times slower than fp32.

`TEXTXFER_AUTO_PRECISION=bf16|no` overrides what `auto` resolves to, so that one machine can run the code paths
of the other kind: the test suite runs once per setting in CI (`pytest --auto-precision bf16`), and a bf16 machine
can reproduce what an fp32-only one computes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger("textxfer")

ENV_AUTO = "TEXTXFER_AUTO_PRECISION"
"""Environment variable that fixes what `mixed_precision: auto` resolves to (`bf16` or `no`)."""

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_warned_emulated = False


def cpu_bf16_native() -> bool:
    """True where this CPU has AMX tiles or AVX512-BF16 instructions (torch then runs bf16 matmuls natively)."""
    return any(getattr(torch.cpu, name, lambda: False)()
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def bf16_native() -> bool:
    """True where the device a run uses (the GPU if there is one, else the CPU) computes bf16 natively."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_native()


def auto_override() -> str | None:
    """What `TEXTXFER_AUTO_PRECISION` says `auto` resolves to, or None when it is unset."""
    value = os.environ.get(ENV_AUTO, "").strip().lower()
    if not value or value == "native":
        return None
    if value not in ("bf16", "no"):
        from textxfer.core.errors import UserError

        raise UserError(f"Environment variable {ENV_AUTO} is {value!r}; use `bf16`, `no` or `native` (or unset it).")
    return value


def effective_mixed_precision(setting: str) -> str:
    """The precision a run with `training.mixed_precision: setting` uses on this machine: `auto` -> `bf16` where
    bf16 is native (or `TEXTXFER_AUTO_PRECISION` says so), else `no`; any other setting unchanged."""
    if setting != "auto":
        return setting
    forced = auto_override()
    if forced is not None:
        return forced
    return "bf16" if bf16_native() else "no"


def autocast_dtype(setting: str) -> torch.dtype | None:
    """The autocast dtype of a run with `training.mixed_precision: setting`, None for fp32."""
    return AUTOCAST_DTYPES.get(effective_mixed_precision(setting))


def warn_if_emulated(setting: str) -> None:
    """Warn once per process when bf16 was asked for on a CPU that only emulates it (correct, but slower)."""
    global _warned_emulated
    if _warned_emulated or effective_mixed_precision(setting) != "bf16" or torch.cuda.is_available():
        return
    if cpu_bf16_native():
        return
    _warned_emulated = True
    how = (f"{ENV_AUTO}={os.environ.get(ENV_AUTO)}" if setting == "auto"
           else f"training.mixed_precision: {setting}")
    log.warning(f"warning: bf16 is emulated on this CPU (no AMX or AVX512-BF16), as {how} asks: results are "
                "correct but training runs several times slower than in fp32. Set `training.mixed_precision: no` "
                "(or `auto`) for speed.")


@contextlib.contextmanager
def full_precision_forward(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` (its innermost module: unwrap DDP first) in fp32 inside the block, even after
    `Accelerator.prepare` wrapped its forward in mixed-precision autocast; the wrapper is put back afterwards.

    A run's final evaluation and saved predictions are computed this way, so that they equal what the saved model
    predicts when loaded (`textxfer predict`, `pipeline()`: fp32), whatever precision the run trained in."""
    wrapped = model.__dict__.get("forward")
    original = model.__dict__.get("_original_forward")
    if wrapped is None or original is None:  # not wrapped: already fp32 outside autocast
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped
