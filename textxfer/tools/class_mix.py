"""The class mix a self-trained model predicts on the unlabelled texts, and two ways of steering it
(docs/self-training.md):

- distribution alignment of the pseudo-labels (ReMixMatch): before a round selects, the teacher's probabilities
  on the unlabelled texts are rescaled, p * target / mean(p), renormalised per text, so that their mean class mix
  is the target one; a teacher that leans to one class then labels as that class fewer of the texts it is unsure
  of;
- the final class-mix shift: after the last round, one offset per class is added to the saved classifier's bias
  so that the class mix it predicts on the unlabelled texts is a target mix (the labelled examples', or the one
  round 0 predicted). A model retrained on its own pseudo-labels inherits its teacher's lean and can amplify it;
  an offset on the logits moves only the decision boundary between classes, not what the body learnt.

The shift is a post-step on a finished run: the saved model's bias is changed on disk, then every prediction
file of the run is scored again with the model as it is now saved and metrics.json's split scores rewritten,
so model, metrics and predictions agree. The offsets depend on the unlabelled texts and a target mix alone,
never on a validation or test label.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

TEMPERATURES = (1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
"""Softmax temperatures of `mix_offsets`' matching, warm-started from one to the next: at 1 the mean
probabilities match the target; at the small end the predicted (argmax) shares nearly do."""


def class_shares(class_ids: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of `class_ids` (a labelled set's labels, or predictions)."""
    counts = np.bincount(np.asarray(class_ids, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def predicted_mix(scores: np.ndarray) -> np.ndarray:
    """The share of texts whose top class is each class, from probabilities or logits (one row per text)."""
    scores = np.asarray(scores)
    return class_shares(scores.argmax(1), scores.shape[1])


def align(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distribution alignment (ReMixMatch): every row of `probs` times target / (the column means of `probs`),
    renormalised to sum to one. One step: the aligned mean is near `target`, not exactly on it."""
    p = np.asarray(probs, dtype=np.float64)
    ratio = _floor(target) / np.maximum(p.mean(0), 1e-12)
    q = p * ratio
    return q / q.sum(1, keepdims=True)


def mix_offsets(logits: np.ndarray, target: np.ndarray, hard: bool = True, iterations: int = 300,
                tol: float = 1e-5) -> np.ndarray:
    """Per-class offsets (mean zero) to add to `logits` so that the class mix they predict is `target`.

    At temperature T the offsets are fitted so that mean(softmax((logits + b) / T)) = target, by the fixed point
    b += T * log(target / mean) (each step rescales the columns, as Sinkhorn's iterations do; it converges to
    the unique solution up to a constant). `hard`: then again at ever lower temperatures, so that the argmax
    shares, what accuracy counts, match as nearly as whole texts allow (those temperatures in units of the
    logits' spread, so that a model whose logits barely differ is matched as nearly as a sure one)."""
    z = np.asarray(logits, dtype=np.float64)
    goal = _floor(target)
    b = np.zeros(z.shape[1])
    centred = z - z.mean(1, keepdims=True)
    spread = min(1.0, float(np.std(centred - centred.mean(0))) or 1.0)  # how much texts' logits differ
    for t in [1.0] + ([spread * t for t in TEMPERATURES[1:]] if hard else []):
        for _ in range(iterations):
            mean = _softmax((z + b) / t).mean(0)
            if np.abs(mean - goal).max() < tol:
                break
            b += t * (np.log(goal) - np.log(np.maximum(mean, 1e-300)))
    return b - b.mean()


def shift_saved_run(run_dir: str | Path, target: np.ndarray, texts: list[str], pairs: list[str] | None,
                    class_weights: np.ndarray | None = None, hard: bool = True) -> dict:
    """Shift the classifier saved in `run_dir` so the class mix it predicts on `texts` (`pairs`: their second
    texts), the unlabelled texts, is `target` (`mix_offsets`, added to its output layer's bias); then score
    every prediction file of the run (predictions/SPLIT.jsonl) again with the model as now saved, rewriting
    those files and metrics.json's split scores and per-class tables. `class_weights`: those of the run's loss
    (its `loss` figure is recomputed). Returns the offsets and the mix predicted on `texts` before and after."""
    import torch

    from textxfer.core.files import write_json
    from textxfer.core.layout import find_model_dir
    from textxfer.modalities.text.predict import Classifier

    run_dir = Path(run_dir)
    clf = Classifier(run_dir)
    logits = clf.logits(texts, pairs)
    offsets = mix_offsets(logits, target, hard)
    name, layer = _output_layer(clf.model, len(clf.labels))
    with torch.no_grad():
        layer.bias.add_(torch.as_tensor(offsets, dtype=layer.bias.dtype, device=layer.bias.device))
    _save_weights(clf.model, find_model_dir(run_dir))
    clf = Classifier(run_dir)  # what is on disk now scores everything below
    record = {"offsets": [round(float(x), 6) for x in offsets], "layer": f"{name}.bias",
              "unlabelled_mix_before": _mix(predicted_mix(logits), clf.labels),
              "unlabelled_mix_after": _mix(predicted_mix(logits + offsets), clf.labels), "rescored": []}
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    for path in sorted((run_dir / "predictions").glob("*.jsonl")):
        scores, per_class = _rescore(clf, path, class_weights)
        if path.stem in metrics:
            metrics[path.stem] = scores
            metrics.setdefault("per_class", {})[path.stem] = per_class
        record["rescored"].append(path.stem)
    write_json(metrics_path, metrics)
    return record


def _output_layer(model, n_classes: int):
    """(name, module) of the classifier's output layer: the last linear layer with one output per class and a
    bias (BERT's `classifier`, RoBERTa's `classifier.out_proj`, DistilBERT's `classifier`...)."""
    import torch

    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == n_classes and m.bias is not None]
    if not found:
        from textxfer.core.errors import UserError

        raise UserError("`self_training.final_class_mix`: the saved model has no linear output layer with a bias "
                        "to shift; set `self_training.final_class_mix: none`.")
    return found[-1]


def _save_weights(model, model_dir: Path) -> None:
    """The model's weights (and config) into `model_dir`, replacing the files `save_pretrained` writes there; the
    tokenizer files stay."""
    tmp = model_dir.parent / f".{model_dir.name}.shift.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tmp.iterdir():
        os.replace(f, model_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)


def _rescore(clf, path: Path, class_weights: np.ndarray | None) -> tuple[dict, dict]:
    """Score a prediction file's texts with `clf`: rewrite the file's pred, confidence and probs, and return
    (metrics with `loss`, per-class table) as training computes them."""
    import torch

    from textxfer.core.metrics import classification_metrics
    from textxfer.deploy.decisions import probabilities

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    logits = clf.logits(texts, pairs)
    probs = probabilities(logits, False)
    refs = np.asarray([clf.labels.index(r["label"]) for r in rows], dtype=np.int64)
    metrics, per_class = classification_metrics(logits.argmax(-1), refs, clf.labels)
    weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    metrics["loss"] = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).float(),
                                                              torch.from_numpy(refs), weight=weight).item())
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row, p in zip(rows, probs, strict=True):
            row.update({"pred": clf.labels[int(p.argmax())], "confidence": float(p.max()),
                        "probs": [round(float(x), 6) for x in p]})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return metrics, per_class


def _mix(shares: np.ndarray, labels: list[str]) -> dict[str, float]:
    return {lab: round(float(s), 4) for lab, s in zip(labels, shares, strict=True)}


def _floor(target: np.ndarray) -> np.ndarray:
    """The target mix with no class at zero (a log of it is taken), summing to one."""
    t = np.maximum(np.asarray(target, dtype=np.float64), 1e-6)
    return t / t.sum()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
