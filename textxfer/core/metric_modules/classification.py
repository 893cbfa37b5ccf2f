"""Single-label classification metrics as an `evaluate` module that ships with textxfer (works offline).

Loaded by absolute path (`evaluate.load(<this file>)`), so no Hub access is needed. Returns accuracy,
macro/micro/weighted F1 and per-class precision, recall, F1 and support.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy, macro/micro/weighted F1 and per-class precision/recall/F1/support."
_KWARGS = """
Args:
    predictions (list[int]): predicted class ids.
    references (list[int]): true class ids.
    num_labels (int): number of classes (classes with no support still get a row).
Returns:
    dict with accuracy, macro_f1, micro_f1, weighted_f1, macro_precision, macro_recall and
    per_class: {"precision": [...], "recall": [...], "f1": [...], "support": [...]} in class-id order.
"""


def prf_from_counts(tp, fp, fn):
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=float), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=float), where=(tp + fn) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    return precision, recall, f1


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        p = np.asarray(predictions, dtype=np.int64)
        r = np.asarray(references, dtype=np.int64)
        k = int(num_labels or (max(p.max(initial=0), r.max(initial=0)) + 1))
        tp = np.bincount(r[p == r], minlength=k).astype(float)
        fp = np.bincount(p[p != r], minlength=k).astype(float)
        fn = np.bincount(r[p != r], minlength=k).astype(float)
        support = np.bincount(r, minlength=k)
        precision, recall, f1 = prf_from_counts(tp, fp, fn)
        micro_p, micro_r, micro_f1 = prf_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True),
                                                     fn.sum(keepdims=True))
        weights = support / max(support.sum(), 1)
        return {
            "accuracy": float((p == r).mean()) if len(r) else 0.0,
            "macro_f1": float(f1.mean()),
            "micro_f1": float(micro_f1[0]),
            "weighted_f1": float((f1 * weights).sum()),
            "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()),
            "per_class": {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
                          "support": support.tolist()},
        }
