"""Seeded, stratified draws from encoded examples: carving a share of each class (`stratified_split`), the
few-shot subsets of train (`data.examples_per_class`, `data.max_train_examples`), and de-duplication of train
within itself and against given validation/test files. Multi-label rows stratify by their rarest label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.notes import note


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, carved) with `fraction` of each class carved out (at least one where possible)."""
    rng = np.random.default_rng(seed)
    keep, carved = [], []
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for _y, idx in sorted(by_class.items()):
        idx = list(rng.permutation(idx))
        n = int(round(len(idx) * fraction))
        if n == 0 and len(idx) > 1 and fraction > 0:
            n = 1
        carved += idx[:n]
        keep += idx[n:]
    return sorted(keep), sorted(carved)


def _by_class(keys: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(keys):
        out.setdefault(y, []).append(i)
    return dict(sorted(out.items()))


def _subset_stratified(keys: list[int], n: int, seed: int) -> list[int]:
    """`n` indices with the class proportions of `keys` (largest remainder; every class kept while n allows)."""
    groups = _by_class(keys)
    total = len(keys)
    quota = {y: len(idx) * n / total for y, idx in groups.items()}
    take = {y: int(q) for y, q in quota.items()}
    if n >= len(groups):
        for y in groups:
            take[y] = max(take[y], 1)
    order = sorted(groups, key=lambda y: (quota[y] - int(quota[y])), reverse=True)
    k = 0
    while sum(take.values()) < n:
        y = order[k % len(order)]
        if take[y] < len(groups[y]):
            take[y] += 1
        k += 1
    while sum(take.values()) > n:  # the minimum of one per class overshot: trim the largest classes
        y = max(take, key=lambda c: take[c])
        take[y] -= 1
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for y, idx in groups.items():
        out += [int(i) for i in rng.permutation(idx)[: take[y]]]
    return sorted(out)


def per_class_subset(keys: list[int], k: int, seed: int, names: list[str], multi: bool = False,
                     unit: str = "training examples") -> list[int]:
    """`k` indices of each class (`keys`: one class index per row, -1 for none), drawn seeded; the few-shot draw
    of text and images alike. A class with fewer than `k` rows is refused, one with none too (single-label: every
    class in `names` must be drawn from; multi-label rows count under their rarest label, so a label may have none)."""
    groups = _by_class(keys)
    classes = sorted(set(groups) | (set() if multi else set(range(len(names)))))
    short = [(names[y] if y >= 0 else "(no label)", len(groups.get(y, []))) for y in classes
             if len(groups.get(y, [])) < k]
    if short:
        listed = ", ".join(f"{n!r} has {c}" for n, c in short[:10]) + (" ..." if len(short) > 10 else "")
        what = " (rows counted under their rarest label)" if multi else ""
        raise UserError(f"`data.examples_per_class` is {k}, but some classes have fewer {unit}{what}: "
                        f"{listed}. Lower `data.examples_per_class` to at most {min(c for _, c in short)}, or add "
                        "examples.")
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _y, idx in groups.items():
        out += [int(i) for i in rng.permutation(idx)[:k]]
    return sorted(out)


def strata(ids: list[list[int]], multi: bool, freq: np.ndarray) -> list[int]:
    """One class per row for stratification: the label itself, or a multi-label row's rarest label (-1: none)."""
    if not multi:
        return [row[0] for row in ids]
    return [min(row, key=lambda j: (freq[j], j)) if row else -1 for row in ids]


def text_key(text: str, pair: str | None = None) -> str:
    """What counts as 'the same example' for duplicates and leakage: the text (and pair), case and spacing kept."""
    return text if pair is None else f"{text}\x1f{pair}"


@dataclass
class EncodedSplit:
    """One split's examples with their class ids, while de-duplication, carving and subsetting pick rows."""

    texts: list[str]
    pairs: list[str] | None
    ids: list[list[int]]

    def take(self, idx: list[int]) -> EncodedSplit:
        return EncodedSplit([self.texts[i] for i in idx],
                            [self.pairs[i] for i in idx] if self.pairs else None, [self.ids[i] for i in idx])

    def keys(self) -> list[str]:
        return [text_key(t, self.pairs[i] if self.pairs else None) for i, t in enumerate(self.texts)]


def label_freq(ids: list[list[int]], num_labels: int) -> np.ndarray:
    """Rows per label (a multi-label row counts once for each of its labels)."""
    return np.bincount(np.fromiter((j for row in ids for j in row), dtype=np.int64), minlength=num_labels)


def dedupe_train(train: EncodedSplit, notes: list[str]) -> EncodedSplit:
    seen: dict[str, int] = {}
    keep, conflicts = [], 0
    for i, k in enumerate(train.keys()):
        if k in seen:
            conflicts += train.ids[seen[k]] != train.ids[i]
            continue
        seen[k] = i
        keep.append(i)
    if len(keep) < len(train.texts):
        extra = f", {conflicts} of them with a different label than the kept copy" if conflicts else ""
        note(notes, f"train: dropped {len(train.texts) - len(keep):,} duplicate text(s){extra} (data.dedupe); "
                     f"{len(keep):,} unique left.")
    return train.take(keep)


def drop_leaks(data: dict[str, EncodedSplit], given: list[str], notes: list[str]) -> None:
    """With dedupe: train rows whose text is also in a given validation/test file leak; drop them from train."""
    for split in ("validation", "test"):
        if split not in given:
            continue  # carved after de-duplication: no overlap by construction
        other = set(data[split].keys())
        keys = data["train"].keys()
        keep = [i for i, k in enumerate(keys) if k not in other]
        if len(keep) < len(keys):
            note(notes, f"train: dropped {len(keys) - len(keep):,} text(s) that also occur in {split} "
                         "(data.dedupe: leakage).")
            data["train"] = data["train"].take(keep)


def few_shot_subset(train: EncodedSplit, cfg: DataConfig, seed: int, names: list[str], multi: bool,
                    freq: np.ndarray, notes: list[str]) -> EncodedSplit:
    """`data.examples_per_class` then `data.max_train_examples` applied to train (stratified, seeded)."""
    if cfg.examples_per_class is not None:
        idx = per_class_subset(strata(train.ids, multi, freq), cfg.examples_per_class, seed + 3, names, multi)
        train = train.take(idx)
        note(notes, f"train: {cfg.examples_per_class} examples per class, {len(idx):,} in all "
                     f"(drawn with training.seed {seed}).")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train.texts):
        idx = _subset_stratified(strata(train.ids, multi, freq), cfg.max_train_examples, seed + 4)
        note(notes, f"train: limited to {len(idx):,} of {len(train.texts):,} examples (data.max_train_examples, "
                     f"stratified, seed {seed + 4}).")
        train = train.take(idx)
    return train
