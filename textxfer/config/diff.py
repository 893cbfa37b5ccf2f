"""Comparing two recipes key by key, as a resume compares the checkpoint's recipe with the current one."""

from __future__ import annotations

from typing import Any


def recipe_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Key paths whose values differ between two recipe dicts (for refusing a resume with a changed recipe).

    Both sides are first normalised as a checkpoint's state.json gives a recipe back (JSON): mapping keys become
    strings (`{0: negative}` equals `{"0": negative}`), tuples become lists, other objects their JSON value (or
    text). Then nested mappings are compared key by key, anything else (lists, nulls, a mapping against a
    scalar) as a whole; `True` differs from `1`, and NaN equals NaN. Never raises on what a recipe can hold."""
    import json
    import math

    def key_text(k: Any) -> str:  # how json.dumps writes a mapping key
        if isinstance(k, str):
            return k
        if isinstance(k, bool):
            return "true" if k else "false"
        if k is None:
            return "null"
        if isinstance(k, int):
            return int.__repr__(k)
        if isinstance(k, float):
            return float.__repr__(k)
        return str(k)

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {key_text(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, str):
            return v
        try:
            return json.loads(json.dumps(v, default=str))
        except (TypeError, ValueError, RecursionError):
            return str(v)

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, dict) or isinstance(y, dict):
            return (isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys()
                    and all(same(x[k], y[k]) for k in x))
        if isinstance(x, list) or isinstance(y, list):
            return (isinstance(x, list) and isinstance(y, list) and len(x) == len(y)
                    and all(same(i, j) for i, j in zip(x, y, strict=True)))
        if isinstance(x, bool) or isinstance(y, bool):
            return isinstance(x, bool) and isinstance(y, bool) and x == y
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            return True
        comparable = type(x) is type(y) or (isinstance(x, (int, float)) and isinstance(y, (int, float)))
        return comparable and x == y

    def walk(x: Any, y: Any, where: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            out = []
            for k in sorted(set(x) | set(y)):
                out += walk(x.get(k), y.get(k), f"{where}.{k}" if where else k)
            return out
        return [] if same(x, y) else [f"{where or 'recipe'}: {x!r} -> {y!r}"]

    return walk(plain(a), plain(b), prefix)
