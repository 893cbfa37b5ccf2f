"""`textxfer data check RECIPE`: load and validate a recipe's data without a model, and say what is in it.

Per split: rows (and rows read from the source), label distribution, text length percentiles (characters, and
tokens with the recipe's tokenizer when it loads offline), the share truncated at `model.max_length`,
duplicates within the split and texts shared with train (leakage). The same report is `check_data(recipe)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from typing import Any

import click
import numpy as np

from textxfer.core.errors import UserError

PERCENTILES = (5, 50, 95, 99)
MAX_LISTED_LABELS = 20


@contextlib.contextmanager
def _quiet():
    """The notes are printed by the report; keep the textxfer and transformers loggers from repeating them."""
    textxfer_log = logging.getLogger("textxfer")
    was = textxfer_log.disabled
    textxfer_log.disabled = True
    from textxfer.backbones.load import transformers_errors_only

    try:
        with transformers_errors_only():
            yield
    finally:
        textxfer_log.disabled = was


def load_tokenizer(recipe) -> tuple[Any | None, str]:
    """(tokenizer, description) from the recipe's model, offline only; (None, why not) when it is not at hand."""
    from textxfer.backbones.load import resolve_model_name
    from textxfer.modalities.text.modality import check_max_length

    name = recipe.model.name
    try:
        path = resolve_model_name(name)
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, revision=recipe.model.revision, local_files_only=True,
                                            trust_remote_code=recipe.model.trust_remote_code)
        config = AutoConfig.from_pretrained(path, revision=recipe.model.revision, local_files_only=True,
                                            trust_remote_code=recipe.model.trust_remote_code)
    except (UserError, OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, (f"tokenizer of `{name}` not available offline ({first[:160]}); token lengths and truncation "
                      "not computed")
    check_max_length(config, recipe.model.max_length, name)
    return tok, f"tokenizer of `{name}`"


def _percentiles(values: np.ndarray) -> dict[str, int]:
    if not len(values):
        return {}
    out = {f"p{p}": int(np.percentile(values, p, method="nearest")) for p in PERCENTILES}
    out["max"] = int(values.max())
    return out


def _keys(ds) -> list[str]:
    from textxfer.data.fingerprint import column
    from textxfer.data.sampling import text_key

    texts = column(ds, "text")
    if "text_pair" in ds.column_names:
        return [text_key(t, p) for t, p in zip(texts, column(ds, "text_pair"), strict=True)]
    return [text_key(t) for t in texts]


def _targets(ds, multi: bool) -> list:
    from textxfer.data.fingerprint import column

    if multi:
        return [tuple(int(i) for i in np.flatnonzero(row)) for row in column(ds, "labels")]
    return column(ds, "label")


def split_stats(ds, labels: list[str], multi: bool, tokenizer, max_length: int,
                train_keys: dict[str, set[str]]) -> dict:
    """Rows, label counts, length percentiles, truncation, duplicates and overlap of one split."""
    from textxfer.data.fingerprint import column

    targets = _targets(ds, multi)
    stats: dict[str, Any] = {"rows": len(ds)}
    if multi:
        hot = np.asarray(column(ds, "labels"), dtype=np.float32).reshape(len(ds), len(labels))
        counts = hot.sum(0).astype(int)
        per_row = Counter(int(n) for n in hot.sum(1))
        stats["labels_per_row"] = {str(k): per_row[k] for k in sorted(per_row)}
    else:
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(labels))
    stats["label_counts"] = {lab: int(counts[i]) for i, lab in enumerate(labels)}
    texts = column(ds, "text")
    pairs = column(ds, "text_pair") if "text_pair" in ds.column_names else None
    chars = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    if pairs is not None:
        chars += np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
    stats["chars"] = _percentiles(chars)
    if tokenizer is not None:
        kw = dict(truncation=False, padding=False, return_attention_mask=False, return_token_type_ids=False)
        enc = tokenizer(texts, pairs, **kw) if pairs is not None else tokenizer(texts, **kw)
        tokens = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
        stats["tokens"] = _percentiles(tokens)
        stats["truncated"] = int((tokens > max_length).sum())
        stats["truncated_share"] = float((tokens > max_length).mean()) if len(tokens) else 0.0
    keys = _keys(ds)
    seen: dict[str, set] = {}
    for k, y in zip(keys, targets, strict=True):
        seen.setdefault(k, set()).add(y)
    stats["duplicates"] = len(keys) - len(seen)
    stats["duplicate_conflicts"] = sum(len(v) > 1 for v in seen.values())
    stats["overlap"] = {other: sum(k in ref for k in keys) for other, ref in train_keys.items()}
    return stats


def check_data(recipe) -> dict:
    """Load a recipe's data as `train` would and describe every split (the report `data check` prints). What
    `train` would refuse before training (a metric it does not record, a `model.max_length` beyond the model's
    positions) is refused here too."""
    from textxfer.data.splits import load_splits
    from textxfer.engine.evaluation import check_metric_names
    from textxfer.modalities.detect import task_of

    if task_of(recipe) == "image":
        raise UserError("`textxfer data check` reads text recipes; this recipe's task is image. `textxfer train` "
                        "checks image files as it reads them (`data.skip_bad_images` leaves out the bad ones).")
    with _quiet():
        started = time.perf_counter()
        splits = load_splits(recipe.data, recipe.training.seed)
        seconds = time.perf_counter() - started
        check_metric_names(recipe, splits.multi_label)
        tokenizer, tok_note = load_tokenizer(recipe)
        report: dict[str, Any] = {
            "labels": splits.labels, "multi_label": splits.multi_label, "load_seconds": round(seconds, 2),
            "tokenizer": tok_note, "max_length": recipe.model.max_length, "notes": list(splits.notes), "splits": {},
        }
        earlier: dict[str, set[str]] = {}
        for name, ds in splits.items():
            stats = split_stats(ds, splits.labels, splits.multi_label, tokenizer, recipe.model.max_length, earlier)
            info = splits.info.get(name, {})
            stats["source"] = info.get("source", "carved from train")
            stats["rows_read"] = info.get("rows_read", 0)
            stats["skipped_rows"] = info.get("skipped_rows", 0)
            stats["label_counts_read"] = info.get("label_counts_read", {})
            report["splits"][name] = stats
            earlier[name] = set(_keys(ds))
    return report


# ---------------------------------------------------------------------------------------------- printing

def _n(x: int) -> str:
    return f"{x:,}"


def _wrap(items: list[str], width: int = 100) -> list[str]:
    """Join items with two spaces, breaking lines between items only."""
    lines, cur = [], ""
    for it in items:
        if cur and len(cur) + 2 + len(it) > width:
            lines.append(cur)
            cur = it
        else:
            cur = f"{cur}  {it}" if cur else it
    return lines + [cur] if cur else lines


def _label_lines(counts: dict[str, int], total: int, all_labels: bool, multi: bool) -> list[str]:
    def item(name: str, c: int) -> str:
        return f"{name} {_n(c)} ({100 * c / max(total, 1):.1f}%)"

    if len(counts) <= MAX_LISTED_LABELS or all_labels:
        return _wrap([item(k, v) for k, v in counts.items()])
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    values = np.array([v for _, v in ranked])
    rows = " (rows with the label)" if multi else ""
    if values.min() == values.max():
        return [f"{len(counts)} labels, {_n(int(values[0]))} each{rows}"]
    head = f"{len(counts)} labels, {_n(int(values.min()))}..{_n(int(values.max()))} per label " \
           f"(median {_n(int(np.median(values)))}){rows}"
    fewest = _wrap(["fewest:"] + [f"{k} {_n(v)}" for k, v in ranked[:5]])
    most = _wrap(["most:"] + [f"{k} {_n(v)}" for k, v in ranked[::-1][:5]])
    return [head, *fewest, *most, "(--all-labels lists every label)"]


def _stat_line(p: dict[str, int]) -> str:
    return "  ".join(f"{k} {_n(v)}" for k, v in p.items())


def render(report: dict, recipe_path: str, all_labels: bool = False) -> str:
    multi = report["multi_label"]
    labels = report["labels"]
    out = [f"data check: {recipe_path}  (loaded in {report['load_seconds']:.1f} s)",
           f"labels ({len(labels)}, {'multi-label' if multi else 'single-label'}): "
           + (", ".join(labels) if len(labels) <= MAX_LISTED_LABELS else ", ".join(labels[:8]) + ", ..."),
           f"lengths: {report['tokenizer']}; truncation at model.max_length {report['max_length']}"]
    if report["notes"]:
        out.append("notes:")
        out += ["  - " + note for note in report["notes"]]
    pad = "               "
    for name, s in report["splits"].items():
        out.append("")
        if s["source"] == "carved from train":
            out.append(f"{name}: {_n(s['rows'])} rows, carved from train")
        else:
            changed = s["rows"] != s["rows_read"]
            out.append(f"{name}: {_n(s['rows'])} rows{' in use' if changed else ''} ({_n(s['rows_read'])} read from "
                       f"{s['source']}{'; skipped ' + _n(s['skipped_rows']) if s['skipped_rows'] else ''})")
        total = s["rows"]
        block = _label_lines(s["label_counts"], total, all_labels, multi)
        out.append(f"  {'labels':<13}" + block[0])
        out += [pad + line for line in block[1:]]
        if s["label_counts_read"] and s["label_counts_read"] != s["label_counts"]:
            block = _label_lines(s["label_counts_read"], s["rows_read"], all_labels, multi)
            out.append(f"  {'as read':<13}" + block[0])
            out += [pad + line for line in block[1:]]
        if multi:
            out.append(f"  {'labels/row':<13}" + "  ".join(f"{k}: {_n(v)}" for k, v in s["labels_per_row"].items()))
        out.append(f"  {'chars':<13}" + _stat_line(s["chars"]))
        if "tokens" in s:
            out.append(f"  {'tokens':<13}" + _stat_line(s["tokens"]))
            out.append(f"  {'truncated':<13}{_n(s['truncated'])} of {_n(total)} "
                       f"({100 * s['truncated_share']:.1f}%) longer than {report['max_length']} tokens")
        else:
            out.append(f"  {'truncated':<13}unknown (no tokenizer)")
        conflicts = f", {_n(s['duplicate_conflicts'])} text(s) with differing labels" \
            if s["duplicate_conflicts"] else ""
        out.append(f"  {'duplicates':<13}{_n(s['duplicates'])} row(s) repeat an earlier text{conflicts}")
        for other, n in s["overlap"].items():
            out.append(f"  {'overlap':<13}{_n(n)} row(s) also in {other}"
                       + (" (leakage: set data.dedupe: true to drop them from train)" if n and other == "train"
                          else ""))
    return "\n".join(out)


@click.group(name="data")
def data_group():
    """Inspect and validate the data of a recipe without training."""


@data_group.command("check")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value, e.g. --set data.max_train_examples=256 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--all-labels", is_flag=True, help="List every label's count, however many labels there are.")
def check_command(recipe, overrides, as_json, all_labels):
    """Load RECIPE's data as `textxfer train` would and report, per split: rows, label distribution, text
    lengths, truncation share, duplicates and train/evaluation overlap. Exit code 2 names a bad file or row.

    \b
    Examples:
      TEXTXFER_DATA=../shared/data textxfer data check recipes/sst2.yaml
      textxfer data check recipes/trec.yaml --set data.label_level=full
      textxfer data check my.yaml --set data.train=new.csv --json
    """
    from textxfer.config.reading import load_recipe

    r = load_recipe(recipe, list(overrides))
    report = check_data(r)
    click.echo(json.dumps(report, indent=2) if as_json else render(report, recipe, all_labels))
