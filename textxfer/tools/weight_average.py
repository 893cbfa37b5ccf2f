"""The body of two saved models averaged weight by weight (a "model soup", Wortsman et al. 2022), for self-training.

Two trainings of the same pretrained checkpoint, each a short tuning of its upper layers, end close to it and to
each other, so the average of their weights is a model too, and on such pairs it tends to classify as well as an
ensemble of the two. Self-training (`self_training.average_bodies`) averages the body tuned on the labelled examples
alone (round 0) with the one tuned on them plus the pseudo-labelled texts (the last round): a round's result then
depends less on the chance of one training on a few hundred texts. Only the body (the parameters under the model's
`base_model_prefix`) is averaged; the classifier is trained again on the averaged body's embeddings.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from textxfer.core.errors import UserError

EVEN = 0.5
"""The weight of the second body in `average_bodies` by default: the two count the same."""


def average_bodies(first: Path, second: Path, out: Path, weight: float = EVEN) -> Path:
    """Write to `out` the model of `second` (a run directory or model folder) with its body's floating-point weights
    replaced by (1 - weight) * first's + weight * second's; returns `out`. Its tokenizer and configuration are
    second's. Both must be the same architecture of the same shapes."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textxfer.backbones.load import SAFE_LOADING
    from textxfer.core.layout import find_model_dir

    if not 0.0 <= weight <= 1.0:
        raise UserError(f"average_bodies: weight {weight} is outside 0..1.")
    a_dir, b_dir = find_model_dir(first), find_model_dir(second)
    a = AutoModelForSequenceClassification.from_pretrained(a_dir, **SAFE_LOADING)
    b = AutoModelForSequenceClassification.from_pretrained(b_dir, **SAFE_LOADING)
    if type(a) is not type(b):
        raise UserError(f"average_bodies: {a_dir} ({type(a).__name__}) and {b_dir} ({type(b).__name__}) are not the "
                        "same architecture.")
    body_a, body_b = getattr(a, a.base_model_prefix), getattr(b, b.base_model_prefix)
    a_state = body_a.state_dict(keep_vars=True)
    done: set[int] = set()  # a tensor shared under two names (tied weights) is averaged once
    with torch.no_grad():
        for name, tensor in body_b.state_dict(keep_vars=True).items():
            other = a_state.get(name)
            if other is None or other.shape != tensor.shape:
                raise UserError(f"average_bodies: {a_dir} and {b_dir} are not the same architecture ({name}).")
            if tensor.is_floating_point() and tensor.data_ptr() not in done:
                done.add(tensor.data_ptr())
                tensor.data.mul_(weight).add_(other.data.to(tensor.dtype), alpha=1.0 - weight)
    if out.exists():
        shutil.rmtree(out)
    b.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(b_dir).save_pretrained(out)
    return out
