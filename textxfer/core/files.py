"""Files a run writes whole or not at all: JSON through a temporary file and a rename, folders swapped in."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=jsonable), encoding="utf-8")
    os.replace(tmp, path)


def jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written temporary folder into place."""
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
