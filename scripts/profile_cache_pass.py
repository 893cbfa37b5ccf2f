#!/usr/bin/env python
"""Where the frozen-prefix cache pass spends its time: torch.profiler over the pass of `head` (the whole body
frozen) on the bench_train slice (500 SST-2 training sentences, seed 42, and the 872 dev sentences).

    .venv/bin/python scripts/profile_cache_pass.py [--strategy head|freeze] [--rows 12]

The pass is what bounds the `head` row of bench_train.py: the table shows which operators take its time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=("head", "freeze"), default="head")
    p.add_argument("--rows", type=int, default=12, help="operators to list")
    a = p.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from textxfer.config.reading import load_recipe
    from textxfer.engine.loop import Loop
    from textxfer.modalities.text.batching import prefix_batches

    with tempfile.TemporaryDirectory() as tmp:
        train, dev = bench_train.make_slices(bench_train.DATA, Path(tmp), 500, None, 42)
        strategy = {"name": a.strategy, "freeze_layers": bench_train.FREEZE_LAYERS}
        recipe = load_recipe(data={
            "model": {"name": bench_train.MODEL, "max_length": bench_train.MAX_LENGTH},
            "data": {"train": str(train), "validation": str(dev), "format": "tsv", "text_column": "sentence",
                     "label_column": "label"},
            "strategy": strategy, "training": {"cache": "memory"}, "output_dir": str(Path(tmp) / "run")})
        loop = Loop(recipe, Path(tmp) / "run")
        loop.build()  # computes the cache once (warm-up), then it is profiled again below
        cache = loop.cache
        cache.uninstall()
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for split in ("train", "validation"):
                enc = loop.encoded[split]
                cache.compute(prefix_batches(enc, loop.tokenizer.pad_token_id, loop.input_names),
                              torch.device("cpu"), enc.lengths)
        print(f"cache pass ({a.strategy}: first_only {cache.first_only}, last-layer cut {cache.cut_last}) under "
              f"the profiler: {time.perf_counter() - started:.2f} s, {torch.get_num_threads()} threads")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    sys.exit(main())
