"""The `hub:<id>` reader: one split of a Hugging Face Hub dataset as a `Table`, keeping the names of its
ClassLabel columns so labels read as names rather than ids (the in-memory reader of a `datasets.Dataset` uses
the same lookup)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.tables import Table

if TYPE_CHECKING:
    from datasets import Dataset


def load_hub(spec: str, cfg: DataConfig, split: str) -> tuple[Dataset, str]:
    """`hub:<id>` loads the split named like the recipe key; `hub:<id>:<split>` picks one (slices allowed).
    Returns the memory-mapped `datasets.Dataset` and its source name (`hub:<id>:<split>`)."""
    repo, _, split_name = spec.partition(":")
    split_name = split_name or split
    from datasets import load_dataset

    what = f"Hub dataset `{repo}`" + (f" (config {cfg.hub_config})" if cfg.hub_config else "") + \
        f", split `{split_name}`"
    try:
        ds = load_dataset(repo, name=cfg.hub_config, split=split_name, revision=cfg.hub_revision)
    except Exception as e:  # network, missing config/split, offline mode: all mean the same to the user
        raise UserError(
            f"Could not load the {what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}. "
            "Check the id, `data.hub_config` and the split name (`hub:<id>:<split>`). Without network access, "
            "download the files elsewhere and point `data.*` at them."
        ) from None
    if not len(ds):
        raise UserError(f"The {what} has no rows.")
    return ds, f"hub:{repo}:{split_name}"


def read_hub(spec: str, cfg: DataConfig, split: str) -> Table:
    """One split of a Hub dataset as a `Table` of Python lists (the columns the recipe names)."""
    return hub_table(*load_hub(spec, cfg, split), cfg)


def hub_table(ds: Dataset, source: str, cfg: DataConfig) -> Table:
    """A loaded Hub split's columns that the recipe names, as Python lists."""
    wanted = {k for k in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if k is not None}
    names = list(ds.column_names)
    wanted |= {names[k] for k in wanted if isinstance(k, int) and k < len(names)}
    columns = {c: ds[c][:] for c in names if c in wanted}
    return Table(columns, source, names=names, class_names=class_label_names(ds, columns))


def class_label_names(ds: Dataset, columns: Iterable[Any]) -> dict[Any, list[str]]:
    """{column: names} for a Dataset's ClassLabel columns (and lists of ClassLabel, for multi-label)."""
    from datasets import ClassLabel

    out = {}
    for c in columns:
        feat = ds.features[c]
        inner = getattr(feat, "feature", None)
        if isinstance(feat, ClassLabel):
            out[c] = list(feat.names)
        elif isinstance(inner, ClassLabel):
            out[c] = list(inner.names)
    return out
