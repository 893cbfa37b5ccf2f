"""`textxfer train` and `textxfer.train()`: a recipe through the whole flow, recipe -> backbone -> strategy -> data
-> loop -> run directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from textxfer.config.reading import load_recipe, save_recipe
from textxfer.config.schema import Recipe, to_dict
from textxfer.engine.loop import Loop
from textxfer.engine.setup import prepare_output_dir
from textxfer.outputs import artifacts
from textxfer.strategies.base import get_strategy

log = logging.getLogger("textxfer")


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict


def train(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None, output_dir: str | Path | None = None,
          overwrite: bool = False, command: str | None = None, resume: str | Path | bool | None = None, *,
          train=None, validation=None, test=None) -> RunResult:
    """Train as the recipe says and write the run directory. Python twin of `textxfer train`.

    `resume`: True (or "") continues from the newest complete checkpoint in the output directory; a path names a
    run directory or one checkpoint folder, whose run directory is then the output directory unless one is given.

    `train`, `validation`, `test`: data from Python, a pandas DataFrame or a `datasets.Dataset` with the columns the
    recipe names (`data.text_column`, `data.label_column`...), in place of the recipe's `data.<split>` files; read
    exactly as a file with the same rows. The saved recipe says `<in-memory pandas.DataFrame, N rows, fingerprint
    ...>` there, run.json records each one's type, rows, columns and fingerprint; a resume needs the same data again.
    """
    from textxfer.data.memory import IN_MEMORY_PREFIX, in_memory
    from textxfer.engine import checkpoint, resuming

    memory = {split: in_memory(split, value) for split, value in
              (("train", train), ("validation", validation), ("test", test)) if value is not None}
    given = {split: m.describe() for split, m in memory.items()}
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides, in_memory=given)
    elif isinstance(recipe, dict):
        recipe = load_recipe(data=recipe, overrides=overrides, in_memory=given)
    elif overrides or memory:
        recipe = load_recipe(data=to_dict(recipe), overrides=overrides, in_memory=given)
    get_strategy(recipe.strategy.name)  # an unknown strategy stops here, before any data or model is read
    if output_dir is not None:
        recipe.output_dir = str(output_dir)
    if recipe.data.unlabelled is not None:  # learning from unlabelled texts: rounds of this function
        from textxfer.tools.self_training import self_train

        return RunResult(*self_train(recipe, train_round, overwrite, command, memory, resume))
    ckpt, notes = None, []
    if resume is not None and resume is not False:
        where = Path(recipe.output_dir) if resume in (True, "") else Path(resume)
        ckpt, notes = resuming.find(where)
        if output_dir is None:
            recipe.output_dir = str(ckpt.parent.parent)
        saved = checkpoint.read_state(ckpt).get("recipe", {})
        current = to_dict(recipe)
        for split in memory:  # in-memory data is compared by its rows' fingerprints (resuming.restore), as files are
            before = (saved.get("data") or {}).get(split)
            if isinstance(before, str) and before.startswith(IN_MEMORY_PREFIX):
                current["data"][split] = before
        notes += resuming.check_recipe(_with_defaults(saved), current)
    out = Path(recipe.output_dir)
    prepare_output_dir(out, overwrite, resuming=ckpt is not None)
    replacing = overwrite and ckpt is None and out.is_dir() and any(out.iterdir())
    loop = Loop(recipe, out, command, resume_from=ckpt, memory=memory, replacing=replacing)
    threads = torch.get_num_threads()
    try:  # the run sets torch's thread count for itself; the host process gets its own back, even on failure
        loop.build()
        for note in notes:
            log.info(note)
        if loop.acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, out / "recipe.yaml")
        loop.prepare()
        if ckpt is not None:
            resuming.restore(loop, ckpt)
        loop.fit()
        metrics, predictions = loop.finish()
        if loop.acc.is_main_process:
            artifacts.write_run(loop, metrics, predictions)
        loop.acc.wait_for_everyone()
    finally:
        torch.set_num_threads(threads)
    return RunResult(out, metrics)


def train_round(recipe: dict, **kwargs) -> RunResult:
    """`train`, for self-training's rounds (inside `train` its own `train=` argument hides the name)."""
    return train(recipe, **kwargs)


def _with_defaults(saved: dict) -> dict:
    """A checkpoint's recipe with today's defaults filled in (keys added since it was written are not changes)."""
    import copy

    try:
        return to_dict(load_recipe(data=copy.deepcopy(saved)))
    except Exception:  # a damaged saved recipe: compared as it is (check_recipe refuses what cannot be compared)
        return saved
