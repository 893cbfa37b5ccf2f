"""Scoring a training run: predictions over a split gathered from every process, metrics and the loss, multi-label
thresholds (tuned on validation, never on test), the evaluation after each epoch with best-model keeping and early
stopping, and the final scores of the model exactly as it is saved (in fp32).

Functions of the `Loop`, which keeps the state they read and set (`best`, `thresholds`, `history`, `progress`);
they call its `score`, `predict_split` and `loader` methods, so a test or script that patches those still sees
every evaluation go through them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from textxfer.core.errors import UserError
from textxfer.core.progress import ProgressReport
from textxfer.engine.best_weights import keep_best

log = logging.getLogger("textxfer")


@torch.inference_mode()
def predict_split(loop, split: str, dl=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, targets, example indices) of a split (through `dl`, default its evaluation loader), gathered
    over processes without duplicates."""
    loop.model.eval()
    outs, targets, index = [], [], []
    dl = dl if dl is not None else loop.eval_dls[split]
    with ProgressReport(f"evaluate {split}", examples_in(dl), "examples", show=loop.acc.is_main_process) as shown:
        for batch in dl:
            logits = loop.logits(batch).float()
            g_logits, g_targets, g_index = loop.acc.gather_for_metrics(
                (logits, batch["targets"], batch["index"]))
            outs.append(g_logits.cpu())
            targets.append(g_targets.cpu())
            index.append(g_index.cpu())
            shown.update(len(g_index))
    logits = torch.cat(outs).numpy()
    order = np.argsort(torch.cat(index).numpy(), kind="stable")
    return logits[order], torch.cat(targets).numpy()[order], torch.cat(index).numpy()[order]


def examples_in(dl) -> int | None:
    """How many examples a loader's pass reads (its dataset's length), or None where it cannot tell."""
    try:
        return len(dl.dataset)
    except (AttributeError, TypeError):
        return None


def score(loop, split: str) -> tuple[dict, dict, np.ndarray]:
    """(metrics incl. loss, per-class table, logits) of a split."""
    from textxfer.core.metrics import classification_metrics

    logits, targets, _ = loop.predict_split(split)
    loss = float(loop.loss(torch.from_numpy(logits), torch.from_numpy(targets)).item())
    if loop.splits.multi_label:
        metrics, per_class = multilabel_scores(loop, split, logits, targets)
    else:
        metrics, per_class = classification_metrics(logits.argmax(-1), targets, loop.labels)
    metrics["loss"] = loss
    return metrics, per_class, logits


def multilabel_scores(loop, split: str, logits: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
    """Sigmoid probabilities; thresholds tuned on validation (then applied unchanged to test)."""
    from textxfer.core.metrics import multilabel_metrics, sigmoid, tune_thresholds

    probs = sigmoid(logits)
    mode = loop.recipe.training.threshold
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        loop.state.thresholds = np.full(len(loop.labels), float(mode), dtype=np.float32)
    elif mode in ("global", "per_label"):
        if split == "validation":  # never on the test set: without validation `finish` sets them beforehand
            loop.state.thresholds = tune_thresholds(probs, targets.astype(np.float32), mode)
    else:
        raise UserError(f"`training.threshold` is {mode!r}; use global, per_label or a number in (0, 1).")
    return multilabel_metrics(probs, targets, loop.labels, loop.state.thresholds)


def thresholds_without_validation(loop) -> np.ndarray:
    """No validation split to tune the thresholds on (and never the test labels): the one threshold that
    maximises the micro-F1 expected under the model's own probabilities on the training texts. With few
    examples the head's probabilities are calibrated (`training.head_l2`) and 0.5 would leave most labels out."""
    from textxfer.core.metrics import expected_f1_thresholds, sigmoid

    _, dl = loop.loader("train", False, 64 * loop.acc.num_processes)
    logits, _, _ = loop.predict_split("train", loop.acc.prepare(dl))
    thresholds = expected_f1_thresholds(sigmoid(logits))
    log.info(f"multi-label thresholds: no validation split to tune them on (`training.threshold: "
             f"{loop.recipe.training.threshold}`): {thresholds[0]:.2f}, the threshold that maximises the micro-F1 "
             f"expected under the model's probabilities on the training texts. Give `data.validation` or "
             f"`data.validation_split` to tune them on labelled examples.")
    return thresholds


def check_metric_names(recipe, multi_label: bool) -> None:
    """`training.metric` and `training.early_stopping.metric` name metrics the run records: checked before any
    training, so a typo does not cost the first epoch."""
    from textxfer.core.metrics import metric_names

    t = recipe.training
    keys = [("training.metric", t.metric)]
    if t.early_stopping is not None and t.early_stopping.metric is not None:
        keys.append(("training.early_stopping.metric", t.early_stopping.metric))
    if all(name == "loss" or name == "accuracy" for _, name in keys):
        return  # recorded for every kind of data: no need to load the metric module
    names = metric_names(multi_label)
    for key, name in keys:
        if name not in names:
            kind = "multi-label" if multi_label else "single-label"
            raise UserError(f"`{key}` is {name!r}; a {kind} run records {', '.join(names)}.")


def evaluate_and_track(loop, step: int, epoch: float) -> None:
    """Score the validation split (when there is one), record it in the history and keep the weights if best."""
    if "validation" not in loop.eval_dls:
        return
    metrics, per_class, logits = loop.score("validation")
    loop.state.last_validation = (step, metrics, per_class, logits)
    entry = {"step": step, "epoch": round(epoch, 4), "split": "validation", **metrics}
    loop.state.history["eval"].append(entry)
    name = loop.recipe.training.metric
    if name not in metrics:
        raise UserError(f"`training.metric` is {name!r}; available: {', '.join(sorted(metrics))}.")
    lower_better = name == "loss"
    better = loop.state.best is None or (metrics[name] < loop.state.best[name] if lower_better
                                   else metrics[name] > loop.state.best[name])
    if better:
        loop.state.best = dict(entry)
        keep_best(loop)
    shown = dict.fromkeys(("loss", "accuracy", "macro_f1", name))  # the metric that picks the best, always
    log.info(f"epoch {epoch:.2f} step {step}: " + ", ".join(
        f"{k} {metrics[k]:.4f}" for k in shown if k in metrics)
        + (" (best)" if better else ""))


def after_evaluation(loop) -> None:
    """Send the evaluation to the trackers; count evaluations without improvement for early stopping."""
    p, t = loop.state.progress, loop.recipe.training
    entry = loop.state.history["eval"][-1] if loop.state.history["eval"] else None
    if entry is None or entry["step"] != p.step:
        return
    loop.acc.log({f"validation/{k}": v for k, v in entry.items()
                  if k not in ("step", "epoch", "split") and isinstance(v, (int, float))}, step=p.step)
    es = t.early_stopping
    if es is None:
        return
    name = es.metric or t.metric
    if name not in entry:
        available = ", ".join(k for k in entry if k not in ("step", "epoch", "split"))
        raise UserError(f"`training.early_stopping.metric` is {name!r}; available: {available}.")
    value, lower_better = entry[name], name == "loss"
    gain = None if p.watch_best is None else (p.watch_best - value if lower_better else value - p.watch_best)
    if gain is None or gain > es.min_delta:
        p.watch_best, p.bad_evals = value, 0
        return
    p.bad_evals += 1
    if p.bad_evals >= es.patience and p.step < loop.total_steps:
        p.stopped_early = {"step": p.step, "epoch": entry["epoch"], "metric": name, "best": p.watch_best}
        log.info(f"early stopping at step {p.step}: validation {name} has not improved by more than "
                 f"{es.min_delta} for {p.bad_evals} evaluations (best {p.watch_best:.4f})")


def score_in_full_precision(loop) -> None:
    """Score the final model as it is saved: the whole model in fp32, no frozen-prefix cache (whose features
    were computed under autocast). A run that trained in bf16 then reports the metrics, and writes the
    predictions, that loading its model folder reproduces (`textxfer evaluate`, `pipeline()`)."""
    loop.drop_cache()
    loop.reload_eval_loaders()


def final_scores(loop, last) -> tuple[dict, dict]:
    """(results for metrics.json, logits per split) of the restored best model; `last` is the last validation
    evaluation (step, metrics, per-class table, logits), reused when it scored the saved model, or None."""
    scores, predictions, per_class_all = {}, {}, {}
    if loop.splits.multi_label and "validation" not in loop.eval_dls and \
            loop.recipe.training.threshold in ("global", "per_label"):  # the saved model needs its thresholds
        loop.state.thresholds = thresholds_without_validation(loop)
    for split in loop.eval_dls:
        if loop.cache is not None and split not in (loop.features or {}):
            loop.drop_cache()  # the test split, not cached: scored by the whole model
        if split == "validation" and last is not None and last[0] == loop.state.progress.step and \
                loop.state.best is not None and loop.state.best["step"] == last[0]:
            _, metrics, per_class, logits = last  # the last evaluation was the best: that is the saved model
        else:
            metrics, per_class, logits = loop.score(split)
        scores[split] = metrics
        per_class_all[split] = per_class
        predictions[split] = logits
    # the held-out test score first: it is the figure a reader (or a script taking the first `accuracy`) wants
    results: dict = {"best_metric": loop.recipe.training.metric, "num_processes": loop.acc.num_processes}
    results.update({split: scores[split] for split in sorted(scores, key=lambda s: s != "test")})
    if loop.state.best is not None:
        results["best"] = {k: v for k, v in loop.state.best.items() if k != "split"}
    if loop.state.progress.stopped_early is not None:
        results["stopped_early"] = loop.state.progress.stopped_early
    results["per_class"] = per_class_all
    if loop.splits.multi_label and loop.state.thresholds is not None:
        results["thresholds"] = [round(float(t), 4) for t in loop.state.thresholds]
    return results, predictions
