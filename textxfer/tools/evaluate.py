"""`textxfer evaluate`: score a saved model on a labelled file with the same metrics as training.

The model reads the file as training read its splits: the same token limit (see `Classifier`) and, for a
sentence-pair model, the second text from the column it was trained with (or `pair_column`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.rows import pick_column, read_table
from textxfer.data.splits import read_split
from textxfer.deploy.decisions import probabilities


def evaluate_file(model_dir: str | Path, data_file: str, text_column: str, label_column: str,
                  pair_column: str | int | None = None) -> tuple[dict, dict]:
    """(metrics, per-class table) of the model on a labelled file: training's metrics plus `loss` (the mean cross
    entropy; without `training.class_weights`, which the model does not keep). `model_dir` may be an exported
    folder: it is scored with onnxruntime, without torch."""
    from textxfer.core.metrics import classification_metrics
    from textxfer.modalities.detect import load_saved

    clf = load_saved(model_dir)
    pair = pair_column if pair_column is not None else clf.pair_column
    cfg = DataConfig(train=data_file, text_column=text_column, label_column=label_column,
                     text_pair_column=pair, multi_label=clf.multi_label)
    try:
        texts, pairs, raw, source = read_split(data_file, cfg)
    except UserError as e:
        if pair is not None:
            _check_pair_column(data_file, cfg, given=pair_column is not None)
        raise UserError(_in_option_words(str(e))) from None
    index = {lab: i for i, lab in enumerate(clf.labels)}
    if clf.multi_label:
        from textxfer.core.metrics import multilabel_metrics

        refs = np.zeros((len(raw), len(clf.labels)), dtype=np.float32)
        for row, values in enumerate(raw):
            for value in values:
                if str(value) not in index:
                    raise UserError(f"{source}, row {row + 1}: label {value!r} is not one of the model's labels "
                                    f"({', '.join(clf.labels)}).")
                refs[row, index[str(value)]] = 1.0
        logits = clf.logits(texts, pairs)
        metrics, per_class = multilabel_metrics(probabilities(logits, True), refs, clf.labels, clf.thresholds)
        return {**metrics, "loss": binary_cross_entropy(logits, refs)}, per_class
    refs, positions = [], False
    for row, value in enumerate(raw):
        key = str(value)
        if key not in index:
            if key.lstrip("-").isdigit() and 0 <= int(key) < len(clf.labels):
                key, positions = clf.labels[int(key)], True
            else:
                raise UserError(f"{source}, row {row + 1}: label {value!r} is not one of the model's labels "
                                f"({', '.join(clf.labels)}).")
        refs.append(index[key])
    if positions:
        import logging

        logging.getLogger("textxfer").warning(
            f"{source}: labels that are numbers were read as positions in the model's labels ("
            + ", ".join(f"{i} = {name}" for i, name in enumerate(clf.labels[:10])) + "); write the label names if "
            "the numbers mean something else.")
    logits = clf.logits(texts, pairs)
    metrics, per_class = classification_metrics(logits.argmax(-1), np.asarray(refs), clf.labels)
    return {**metrics, "loss": cross_entropy(logits, np.asarray(refs))}, per_class


OPTION_WORDS = {"recipe key `data.train`": "--data", "`data.train`": "--data", "`data.text_column`": "--text-column",
                "`data.label_column`": "--label-column", "`data.text_pair_column`": "--pair-column"}
"""The data reader speaks in recipe keys; `textxfer evaluate` takes options instead."""


def _in_option_words(message: str) -> str:
    for key, option in OPTION_WORDS.items():
        message = message.replace(key, option)
    return message


def cross_entropy(logits: np.ndarray, refs: np.ndarray) -> float:
    """Mean cross entropy of class ids under the logits (as torch's `cross_entropy`, in float64)."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
    return float(np.mean(log_z - x[np.arange(len(refs)), refs])) if len(refs) else float("nan")


def binary_cross_entropy(logits: np.ndarray, refs: np.ndarray) -> float:
    """Mean binary cross entropy of multi-hot targets under the logits (torch's `..._with_logits`, float64)."""
    x = logits.astype(np.float64)
    return float(np.mean(np.maximum(x, 0) - x * refs + np.log1p(np.exp(-np.abs(x))))) if x.size else float("nan")


def _check_pair_column(data_file: str, cfg: DataConfig, given: bool) -> None:
    """Reading the file failed: if it lacks the second-text column, say so in terms of the model and the option."""
    table = read_table(data_file, cfg, "train", [])
    try:
        pick_column(table, cfg.text_pair_column, "text_pair_column")
        return
    except UserError:
        pass
    pair = cfg.text_pair_column
    columns = "one text per line" if table.fixed else "columns: " + ", ".join(map(str, table.names[:30]))
    why = ("(--pair-column)" if given else
           f"for the second text of each pair: the model was trained on sentence pairs with the second text in "
           f"column `{pair}` (its config's `textxfer_text_pair_column`)")
    raise UserError(f"{data_file} has no column `{pair}` {why}; {columns}. Give a file with that column, or name "
                    "the column that holds the second texts with --pair-column.")


def evaluate_images(model_dir: str | Path, data: str, image_column: str = "image",
                    label_column: str = "label") -> tuple[dict, dict]:
    """`textxfer evaluate` for image models: a folder of class folders (or a CSV/JSONL with image paths) scored
    with the same metrics as training. Every file is checked first; labels must be the model's."""
    from textxfer.core.metrics import classification_metrics
    from textxfer.modalities.image.classifier import ImageClassifier
    from textxfer.modalities.image.files import ImageSplit, check_image_files, read_images

    clf = ImageClassifier(model_dir)
    cfg = DataConfig(train=data, image_column=image_column, label_column=label_column)
    read, _ = check_image_files(read_images(data, cfg, "evaluate", set()), cfg, "evaluate")
    index = {lab: i for i, lab in enumerate(clf.labels)}
    unknown = sorted({r for r in read.raw if r not in index})
    if unknown:
        raise UserError(f"{data}: label(s) {', '.join(unknown[:10])} are not among the model's labels "
                        f"({', '.join(clf.labels[:20])}). Evaluate on data with the classes the model was trained on.")
    refs = np.asarray([index[r] for r in read.raw])
    split = ImageSplit(read.items, refs, read.names, read.source)
    images = [x if isinstance(x, Path) else split.load(i) for i, x in enumerate(read.items)]
    preds = clf.probabilities(images).argmax(-1)
    return classification_metrics(preds, refs, clf.labels)
