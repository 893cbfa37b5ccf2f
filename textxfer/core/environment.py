"""What machine this is: the facts a bug report needs (`textxfer env`; `run.json` records the same).

`describe()` gathers package versions, Python, the OS, the CPU (model, cores, whether it computes bf16 natively),
what `training.mixed_precision: auto` resolves to here, the GPUs, the cache folders and the environment variables
that change what textxfer does. `format_report()` turns it into aligned `key: value` lines to paste into an issue.

Nothing secret is gathered: an environment variable whose name contains TOKEN, KEY, SECRET or PASSWORD is never
read, and a value that looks like a credential (an `hf_...` token, a URL with a user or password) is masked.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

PACKAGES = ("textxfer", "torch", "transformers", "accelerate", "peft", "datasets", "huggingface_hub",
            "tokenizers", "safetensors", "evaluate")
"""Package versions a report lists (`not installed` for those that are not)."""

NOT_INSTALLED = "not installed"

ENV_PREFIXES = ("TEXTXFER_", "HF_", "TRANSFORMERS_", "ACCELERATE_", "PYTORCH_", "CUDA_", "NCCL_")
ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_RANK")
"""Environment variables reported (those set): they change caching, precision, threads or devices."""

SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
_SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}|://[^/\s]*@")


def is_secret_name(name: str) -> bool:
    """True for an environment variable whose value must never be printed or recorded."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def _safe_value(value: str) -> str:
    return "<redacted>" if _SECRET_VALUE.search(value) else value


def cache_root() -> Path:
    """textxfer's cache folder: `$TEXTXFER_CACHE`, default ~/.cache/textxfer."""
    return Path(os.environ.get("TEXTXFER_CACHE", Path.home() / ".cache" / "textxfer"))


def feature_cache_dir() -> Path:
    """Where the frozen-prefix cache keeps its files."""
    return cache_root() / "features"


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = NOT_INSTALLED
    return out


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo `model name` on Linux, else what `platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _env_vars() -> dict[str, str]:
    return {name: _safe_value(value) for name, value in sorted(os.environ.items())
            if (name.startswith(ENV_PREFIXES) or name in ENV_NAMES) and not is_secret_name(name)}


def _precision() -> dict:
    from textxfer.core.precision import ENV_AUTO, auto_override, bf16_native, effective_mixed_precision

    native = "bf16" if bf16_native() else "no"
    out = {"auto_native": native, "auto_override_variable": ENV_AUTO}
    try:
        return {"auto_resolves_to": effective_mixed_precision("auto"), "auto_override": auto_override(), **out}
    except Exception as e:  # a bad TEXTXFER_AUTO_PRECISION value: training refuses it, the report says why
        return {"error": f"{type(e).__name__}: {e}", **out}


def _gpus(torch) -> list[dict]:
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        with torch.cuda.device(i):
            bf16 = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        gpus.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}", "bf16": bf16})
    return gpus


def _guard(fn, *args):
    """A section that cannot be gathered says why instead of losing the whole report."""
    try:
        return fn(*args)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def describe() -> dict:
    """The machine and software this process runs on, as a JSON-serialisable dict."""
    import torch

    def cpu():
        from textxfer.core.hardware import physical_cores
        from textxfer.core.precision import cpu_bf16_native

        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {"model": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
                "physical_cores": physical_cores(), "torch_threads": torch.get_num_threads(),
                "bf16_native": bool(cpu_bf16_native())}

    def cuda():
        available = torch.cuda.is_available()
        return {"available": available, "version": torch.version.cuda, "hip": torch.version.hip,
                "gpus": _gpus(torch) if available else []}

    def cache():
        from huggingface_hub import constants


        return {"features": str(feature_cache_dir()), "huggingface_hub": str(constants.HF_HUB_CACHE),
                "hf_hub_offline": bool(constants.HF_HUB_OFFLINE)}

    return {
        "versions": package_versions(),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "platform": platform.platform(),
        "cpu": _guard(cpu),
        "mixed_precision": _guard(_precision),
        "cuda": _guard(cuda),
        "cache": _guard(cache),
        "env": _guard(_env_vars),
    }


def _yes(flag) -> str:
    return "yes" if flag else "no"


def format_report(info: dict) -> str:
    """Aligned `key: value` lines, ready to paste into an issue."""
    rows: list[tuple[str, str]] = [(pkg, ver) for pkg, ver in info.get("versions", {}).items()]
    py = info.get("python", {})
    rows.append(("Python", f"{py.get('version')} ({py.get('implementation')})"))
    rows.append(("Platform", str(info.get("platform"))))
    cpu = info.get("cpu", {})
    if "error" in cpu:
        rows.append(("CPU", cpu["error"]))
    else:
        rows.append(("CPU", str(cpu.get("model"))))
        rows.append(("CPU cores", f"{cpu.get('logical_cpus')} logical, {cpu.get('usable_cpus')} usable, "
                                  f"{cpu.get('physical_cores')} physical; torch threads {cpu.get('torch_threads')}"))
        rows.append(("CPU bf16 native", _yes(cpu.get("bf16_native"))))
    mp = info.get("mixed_precision", {})
    if "error" in mp:
        rows.append(("mixed_precision auto resolves to", mp["error"]))
    else:
        how = (f"{mp['auto_override_variable']}={mp['auto_override']}" if mp.get("auto_override")
               else "native")
        extra = f"; native would be {mp['auto_native']}" if mp.get("auto_override") else ""
        rows.append(("mixed_precision auto resolves to", f"{mp.get('auto_resolves_to')} ({how}{extra})"))
    cuda = info.get("cuda", {})
    if "error" in cuda:
        rows.append(("CUDA", cuda["error"]))
    else:
        build = cuda.get("version") or (f"ROCm {cuda['hip']}" if cuda.get("hip") else "none (CPU build)")
        rows.append(("CUDA", f"{'available' if cuda.get('available') else 'not available'}; torch built with {build}"))
        gpus = cuda.get("gpus") or []
        if not gpus:
            rows.append(("GPUs", "none"))
        for g in gpus:
            rows.append((f"GPU {g['index']}", f"{g['name']}, {g['memory_gib']} GiB, compute {g['capability']}, "
                                              f"bf16 {_yes(g['bf16'])}"))
    cache = info.get("cache", {})
    if "error" in cache:
        rows.append(("Cache", cache["error"]))
    else:
        rows.append(("Feature cache", str(cache.get("features"))))
        rows.append(("Hugging Face cache", str(cache.get("huggingface_hub"))))
        rows.append(("HF_HUB_OFFLINE", _yes(cache.get("hf_hub_offline"))))
    env = info.get("env", {})
    if "error" in env:
        rows.append(("Environment", env["error"]))
    else:
        rows.extend((name, value) for name, value in env.items() if name != "HF_HUB_OFFLINE")
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in rows)



def versions() -> dict[str, str]:
    """Python's and each installed package's version (run.json, checkpoints): `PACKAGES` less those not installed."""
    return {"python": platform.python_version(),
            **{pkg: v for pkg, v in package_versions().items() if v != NOT_INSTALLED}}
