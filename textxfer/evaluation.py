"""`textxfer evaluate`: score a saved model on a labelled file with the same metrics as training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textxfer.data import _read_split
from textxfer.errors import UserError
from textxfer.recipe import DataConfig


def evaluate_file(model_dir: str | Path, data_file: str, text_column: str, label_column: str) -> tuple[dict, dict]:
    from textxfer.metrics import classification_metrics
    from textxfer.predict import load

    clf = load(model_dir)
    cfg = DataConfig(train=data_file, text_column=text_column, label_column=label_column,
                     multi_label=clf.multi_label)
    texts, pairs, raw, source = _read_split(data_file, cfg)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    if clf.multi_label:
        from textxfer.metrics import multilabel_metrics

        refs = np.zeros((len(raw), len(clf.labels)), dtype=np.float32)
        for row, values in enumerate(raw):
            for value in values:
                if str(value) not in index:
                    raise UserError(f"{source}, row {row + 1}: label {value!r} is not one of the model's labels "
                                    f"({', '.join(clf.labels)}).")
                refs[row, index[str(value)]] = 1.0
        return multilabel_metrics(clf.probabilities(texts, pairs), refs, clf.labels, clf.thresholds)
    refs = []
    for row, value in enumerate(raw):
        key = str(value)
        if key not in index:
            if key.lstrip("-").isdigit() and 0 <= int(key) < len(clf.labels):
                key = clf.labels[int(key)]
            else:
                raise UserError(f"{source}, row {row + 1}: label {value!r} is not one of the model's labels "
                                f"({', '.join(clf.labels)}).")
        refs.append(index[key])
    preds = clf.logits(texts, pairs).argmax(-1)
    return classification_metrics(preds, np.asarray(refs), clf.labels)
