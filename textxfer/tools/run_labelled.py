"""The texts a saved run already has labels for, for `textxfer suggest`.

Choosing what to label next needs to know what is labelled: a pool text that is already a training, validation
or test text must not be suggested again (labelling it twice wastes the budget; moving a test text into training
leaks the test set), and cluster coverage (`typiclust`, `typiclust-margin`) skips the parts of the pool that the
training texts already cover. They come from the run's own recipe (recipe.yaml in the run folder), read again
exactly as its training read them (few-shot draw, carved splits, de-duplication), or from a file the user names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")


@dataclass
class LabelledTexts:
    """The training texts (what coverage counts) and every labelled text's key per split (what the pool loses)."""

    texts: list[str]
    pairs: list[str] | None
    source: str
    keys: dict[str, set[str]] = field(default_factory=dict)
    """{split: `text_key`s}: train, validation, test (a run's recipe) or `labelled` (a file)."""


def from_run(run_dir: str | Path) -> LabelledTexts | None:
    """The labelled splits of the run in `run_dir`, read from its recipe.yaml as its training read them; None (and a
    warning saying how to give them) when the run has no recipe or its data cannot be read any more."""
    from textxfer.config.reading import load_recipe
    from textxfer.data.splits import load_splits

    path = Path(run_dir) / "recipe.yaml"
    how = "give them with --labelled FILE (or --labelled none to go without)"
    if not path.is_file():
        log.warning(f"{run_dir} has no recipe.yaml, so its training texts are unknown: every part of the pool counts "
                    f"as uncovered and the pool keeps texts that may already be labelled; {how}.")
        return None
    try:
        recipe = load_recipe(path)
        cfg = recipe.data
        if cfg.train is None:
            raise UserError("its recipe names no `data.train` (the run was trained from Python data)")
        splits = dict(load_splits(replace(cfg, unlabelled=None), recipe.training.seed).items())
    except (UserError, OSError, ValueError) as e:
        log.warning(f"the training texts of {run_dir} could not be read again from its recipe.yaml ({e}); {how}.")
        return None
    keys = {name: split_keys(split) for name, split in splits.items()}
    train = splits["train"]
    pairs = list(train["text_pair"]) if "text_pair" in train.column_names else None
    return LabelledTexts(list(train["text"]), pairs, f"{path} (data.train: {recipe.data.train})", keys)


def from_file(path: str, text_column: str, pair_column: str | None) -> LabelledTexts:
    """The texts of a file of labelled examples (CSV/TSV/JSONL/Parquet with the text column, or one text per
    line); their labels are not read."""
    from textxfer.tools.predict_inputs import Inputs

    if path == "-":
        raise UserError("--labelled -: stdin already holds the pool; give the labelled texts as a file.")
    rows = list(Inputs([path], text_column, pair_column, "--pair-column", note_empty=False).rows())
    texts = [str(t).strip() for t, _ in rows]
    pairs = [str(p).strip() for _, p in rows] if pair_column is not None else None
    if not any(texts):
        raise UserError(f"--labelled {path}: no text in it (text column `{text_column}`).")
    keep = [i for i, t in enumerate(texts) if t]
    texts = [texts[i] for i in keep]
    pairs = [pairs[i] for i in keep] if pairs is not None else None
    result = LabelledTexts(texts, pairs, path)
    result.keys["labelled"] = split_keys({"text": texts, **({"text_pair": pairs} if pairs is not None else {})})
    return result


def split_keys(split) -> set[str]:
    """The `text_key` of every example of a split (a dataset, or a dict of `text` and `text_pair` lists)."""
    from textxfer.data.sampling import text_key

    texts = split["text"]
    names = split.column_names if hasattr(split, "column_names") else list(split)
    pairs = split["text_pair"] if "text_pair" in names else None
    return {text_key(str(t).strip(), str(pairs[i]).strip() if pairs is not None else None)
            for i, t in enumerate(texts)}
