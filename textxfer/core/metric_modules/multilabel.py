"""Multi-label classification metrics as an `evaluate` module that ships with textxfer (works offline).

Loaded by absolute path (`evaluate.load(<this file>)`), so no Hub access is needed. Inputs are multi-hot rows
(one 0/1 per label) after thresholding; returns subset accuracy, micro/macro/samples F1 and per-label
precision, recall, F1 and support.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Subset accuracy, micro/macro/samples F1, Hamming loss and per-label precision/recall/F1/support."
_KWARGS = """
Args:
    predictions (list[list[int]]): predicted multi-hot rows (1 = label predicted), one entry per label.
    references (list[list[int]]): true multi-hot rows.
Returns:
    dict with
      accuracy         subset accuracy: share of examples whose predicted label set is exactly the true set;
      micro_f1, micro_precision, micro_recall   over all (example, label) decisions pooled;
      macro_f1, macro_precision, macro_recall   unweighted mean over labels (a label never true and never predicted
                       counts as 0, as in scikit-learn's default);
      samples_f1       mean over examples of the F1 between predicted and true sets (both empty = 1);
      hamming_loss     share of wrong (example, label) decisions;
      per_class: {"precision": [...], "recall": [...], "f1": [...], "support": [...]} in label-id order.
"""


def prf_from_counts(tp, fp, fn):
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=float), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=float), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    return precision, recall, f1


class Multilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.List(datasets.Value("int64")),
                                        "references": datasets.List(datasets.Value("int64"))}),
        )

    def _compute(self, predictions, references):
        p = np.asarray(predictions, dtype=bool)
        r = np.asarray(references, dtype=bool)
        if p.ndim != 2 or p.shape != r.shape:
            raise ValueError(f"predictions {p.shape} and references {r.shape} must be equal-shaped 2-d multi-hot")
        tp = (p & r).sum(0).astype(float)
        fp = (p & ~r).sum(0).astype(float)
        fn = (~p & r).sum(0).astype(float)
        precision, recall, f1 = prf_from_counts(tp, fp, fn)
        micro_p, micro_r, micro_f1 = prf_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True),
                                                     fn.sum(keepdims=True))
        inter = (p & r).sum(1)
        sizes = p.sum(1) + r.sum(1)
        samples = np.divide(2 * inter, sizes, out=np.ones(len(p), dtype=float), where=sizes > 0)
        return {
            "accuracy": float((p == r).all(1).mean()) if len(r) else 0.0,
            "micro_f1": float(micro_f1[0]),
            "micro_precision": float(micro_p[0]),
            "micro_recall": float(micro_r[0]),
            "macro_f1": float(f1.mean()),
            "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()),
            "samples_f1": float(samples.mean()) if len(r) else 0.0,
            "hamming_loss": float((p != r).mean()) if r.size else 0.0,
            "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                          "support": r.sum(0).astype(int).tolist()},
        }
