"""Texts -> the vector a sequence classifier reads: position 0 of its encoder's last layer (the averaged token
states under `model.pooling: mean`, the first token's state under `cls`), as the contrastive stage compares them.

Used where a model's own features are wanted without training: out-of-fold probabilities from a head on frozen
embeddings (`textxfer data issues`) and the diversity of texts chosen for labelling (`textxfer suggest`). Texts are
tokenised once and run longest first in batches of bounded padded size, in inference mode, fp32.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from textxfer.backbones.load import input_names, unwrap_peft
from textxfer.modalities.text.batching import CACHE_BATCH_TOKENS, Collator, encode, token_budget_batches


def encoder_of(model: nn.Module) -> nn.Module:
    """The body of a `...ForSequenceClassification` model (what `base_model_prefix` names)."""
    root = unwrap_peft(model)
    return getattr(root, root.base_model_prefix)


@torch.inference_mode()
def embed_texts(model: nn.Module, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                with_logits: bool = False, device: torch.device | str | None = None,
                max_batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings [n, hidden] float32, logits [n, classes] float32 or None) of `texts` (and their `pairs`).

    With `with_logits`, the whole classifier runs once and the embedding is read from its encoder on the way
    (a forward hook), so a saved model gives its probabilities and features in one pass; without, only the
    encoder runs. Texts are cut at `max_length` tokens, as training reads them."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    hidden = int(getattr(unwrap_peft(model).config, "hidden_size", 0) or 0)
    if not texts:
        return np.zeros((0, hidden), np.float32), (np.zeros((0, model.config.num_labels), np.float32)
                                                   if with_logits else None)
    was_training = model.training
    model.to(device).eval()
    enc = encode(tokenizer, list(texts), pairs, np.zeros(len(texts), dtype=np.int64), max_length)
    collate = Collator(enc, tokenizer.pad_token_id)
    names = input_names(model)
    encoder = encoder_of(model)
    seen: list[torch.Tensor] = []
    hook = encoder.register_forward_hook(lambda _m, _a, out: seen.append(_first_position(out))) \
        if with_logits else None
    embeddings: np.ndarray | None = None
    logits: np.ndarray | None = None
    try:
        for idx in token_budget_batches(enc.lengths, CACHE_BATCH_TOKENS, max_batch=max_batch):
            batch = collate(idx)
            inputs = {k: batch[k].to(device) for k in names if k in batch}
            if with_logits:
                seen.clear()
                out = model(**inputs).logits.float().cpu().numpy()
                if logits is None:
                    logits = np.zeros((len(texts), out.shape[1]), np.float32)
                logits[idx] = out
                z = seen[-1]
            else:
                z = _first_position(encoder(**inputs))
            z = z.float().cpu().numpy()
            if embeddings is None:
                embeddings = np.zeros((len(texts), z.shape[1]), np.float32)
            embeddings[idx] = z
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    assert embeddings is not None
    return embeddings, logits


def _first_position(out) -> torch.Tensor:
    """Position 0 of an encoder's last layer, from its output object or tuple."""
    states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return states[:, 0]
