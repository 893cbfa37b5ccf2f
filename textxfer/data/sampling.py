"""Seeded, stratified draws from encoded examples: carving a share of each class (`stratified_split`), the
few-shot subsets of train (`data.examples_per_class`, `data.max_train_examples`), and de-duplication of train
within itself and against given validation/test files. Multi-label rows stratify by their rarest label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from textxfer.config.schema import DataConfig
from textxfer.core.errors import UserError
from textxfer.data.notes import note


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, carved) with `fraction` of each class carved out (at least one where possible)."""
    keep, carved = stratified_indices(labels, fraction, seed)
    return keep.tolist(), carved.tolist()


def stratified_indices(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`stratified_split` as sorted index arrays (a class per row as a list or an array)."""
    rng = np.random.default_rng(seed)
    keep, carved = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for _y, idx in _by_class(labels).items():
        idx = rng.permutation(idx)
        n = int(round(len(idx) * fraction))
        if n == 0 and len(idx) > 1 and fraction > 0:
            n = 1
        carved.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(carved))


def _by_class(keys) -> dict[int, np.ndarray]:
    """{class: its row indices, ascending}, classes ascending."""
    keys = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    classes, starts = np.unique(keys[order], return_index=True)
    ends = np.append(starts[1:], len(keys))
    return {int(y): order[a:b] for y, a, b in zip(classes, starts, ends, strict=True)}


def subset_stratified(keys: list[int], n: int, seed: int) -> list[int]:
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


def strata(ids: list[list[int]] | np.ndarray, multi: bool, freq: np.ndarray) -> list[int] | np.ndarray:
    """One class per row for stratification: the label itself, or a multi-label row's rarest label (-1: none)."""
    if isinstance(ids, np.ndarray):
        return ids
    if not multi:
        return [row[0] for row in ids]
    return [min(row, key=lambda j: (freq[j], j)) if row else -1 for row in ids]


def text_key(text: str, pair: str | None = None) -> str:
    """What counts as 'the same example' for duplicates and leakage: the text (and pair), case and spacing kept."""
    return text if pair is None else f"{text}\x1f{pair}"


def loose_key(key: str) -> str:
    """A `text_key` with case and runs of spaces ignored: what keeps a text that only differs in case or spacing
    from a labelled or test one from being pseudo-labelled or suggested (an uncased tokenizer reads both alike)."""
    return "\x1f".join(" ".join(part.split()).casefold() for part in key.split("\x1f"))


@dataclass
class EncodedSplit:
    """One split's examples with their class ids, while de-duplication, carving and subsetting pick rows: texts
    as lists (a split read whole), or rows `index` of a memory-mapped `store` (`stored.StoredRows`, a split
    read in chunks) with one class id per row in an array."""

    texts: list[str] | None
    pairs: list[str] | None
    ids: list[list[int]] | np.ndarray
    store: Any = None
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx) -> EncodedSplit:
        if self.store is not None:
            idx = np.asarray(idx, dtype=np.int64)
            return EncodedSplit(None, None, self.ids[idx], self.store, self.index[idx])
        return EncodedSplit([self.texts[i] for i in idx],
                            [self.pairs[i] for i in idx] if self.pairs else None, [self.ids[i] for i in idx])

    def keys(self) -> list[str]:
        return [text_key(t, self.pairs[i] if self.pairs else None) for i, t in enumerate(self.texts)]

    def keys_at(self, idx: np.ndarray) -> list[str]:
        """The text keys of these rows (read from the store, for a stored split)."""
        if self.store is not None:
            return self.store.texts_at(self.index[idx])
        return [text_key(self.texts[i], self.pairs[i] if self.pairs else None) for i in idx]

    def hashes(self) -> np.ndarray:
        """A 64-bit hash of each row's text key (xxh3): de-duplication of stored splits compares these first."""
        if self.store is not None:
            return self.store.hashes[self.index]
        import xxhash

        return np.fromiter((xxhash.xxh3_64_intdigest(k.encode()) for k in self.keys()), dtype=np.uint64,
                           count=len(self.texts))


def label_freq(ids: list[list[int]] | np.ndarray, num_labels: int) -> np.ndarray:
    """Rows per label (a multi-label row counts once for each of its labels)."""
    if isinstance(ids, np.ndarray):
        return np.bincount(ids, minlength=num_labels)
    return np.bincount(np.fromiter((j for row in ids for j in row), dtype=np.int64), minlength=num_labels)


def _same_keys(split: EncodedSplit, a: np.ndarray, b: np.ndarray, block: int = 100_000) -> np.ndarray:
    """Whether rows a[i] and b[i] have the same text key (equal hashes are checked, never trusted)."""
    out = np.zeros(len(a), dtype=bool)
    for s in range(0, len(a), block):
        x, y = split.keys_at(a[s:s + block]), split.keys_at(b[s:s + block])
        out[s:s + block] = [p == q for p, q in zip(x, y, strict=True)]
    return out


def _dedupe_hashed(train: EncodedSplit) -> tuple[np.ndarray, int]:
    """(rows kept, dropped rows whose label differs from the kept copy): `dedupe_train` by sorted hashes. Rows
    with equal hashes but different texts (a 64-bit collision) are all kept."""
    h = train.hashes()
    order = np.argsort(h, kind="stable")
    starts = np.ones(len(h), dtype=bool)
    starts[1:] = h[order][1:] != h[order][:-1]
    firsts = order[starts]
    later = order[~starts]
    first_of = firsts[(np.cumsum(starts) - 1)[~starts]]
    same = _same_keys(train, later, first_of)
    ids = np.asarray(train.ids)
    conflicts = int((ids[later[same]] != ids[first_of[same]]).sum())
    return np.sort(np.concatenate([firsts, later[~same]])), conflicts


def dedupe_train(train: EncodedSplit, notes: list[str]) -> EncodedSplit:
    """Train without repeated texts (the first copy kept), saying how many went and how many disagreed."""
    if train.store is not None:
        keep, conflicts = _dedupe_hashed(train)
    else:
        seen: dict[str, int] = {}
        keep, conflicts = [], 0
        for i, k in enumerate(train.keys()):
            if k in seen:
                conflicts += train.ids[seen[k]] != train.ids[i]
                continue
            seen[k] = i
            keep.append(i)
    if len(keep) < len(train):
        extra = f", {conflicts} of them with a different label than the kept copy" if conflicts else ""
        note(notes, f"train: dropped {len(train) - len(keep):,} duplicate text(s){extra} (data.dedupe); "
                     f"{len(keep):,} unique left.")
    return train.take(keep)


def drop_leaks(data: dict[str, EncodedSplit], given: list[str], notes: list[str]) -> None:
    """With dedupe: train rows whose text is also in a given validation/test file leak; drop them from train."""
    for split in ("validation", "test"):
        if split not in given:
            continue  # carved after de-duplication: no overlap by construction
        train = data["train"]
        if train.store is None and data[split].store is None:
            other = set(data[split].keys())
            keep = [i for i, k in enumerate(train.keys()) if k not in other]
        else:
            keep = _not_in(train, data[split])
        if len(keep) < len(train):
            note(notes, f"train: dropped {len(train) - len(keep):,} text(s) that also occur in {split} "
                         "(data.dedupe: leakage).")
            data["train"] = train.take(keep)


def note_leaks(data: dict[str, EncodedSplit], given: list[str], notes: list[str]) -> None:
    """Without dedupe: say how many train texts also occur in a given validation/test file (its figures are then
    optimistic), counting those whose label differs there. Hashes first, as `drop_leaks`: memory-mapped splits
    carry theirs."""
    train = data["train"]
    for split in ("validation", "test"):
        if split not in given:
            continue
        other = data[split]
        mine, theirs_at = train.hashes(), other.hashes()
        shared = _in_other(train, other, mine, theirs_at)
        if not len(shared):
            continue
        at = np.flatnonzero(np.isin(theirs_at, mine[shared]))
        theirs: dict[str, np.ndarray] = {}
        for key, i in zip(other.keys_at(at), at.tolist(), strict=True):
            theirs.setdefault(key, np.atleast_1d(np.asarray(other.ids[i])))
        differ = sum(1 for key, i in zip(train.keys_at(shared), shared.tolist(), strict=True)
                     if not np.array_equal(np.atleast_1d(np.asarray(train.ids[i])), theirs[key]))
        labels = f", {differ:,} of them with another label there" if differ else ""
        distinct = len(set(train.keys_at(shared)))
        rows = (f"{len(shared):,} text(s)" if distinct == len(shared) else
                f"{len(shared):,} rows ({distinct:,} distinct text{'s' if distinct > 1 else ''})")
        note(notes, f"train: {rows} also occur in {split}{labels}: its figures are optimistic. "
                     "Set `data.dedupe: true` to drop them from train.")


def _not_in(train: EncodedSplit, other: EncodedSplit) -> np.ndarray:
    """The train rows whose text key does not occur in `other`."""
    return np.setdiff1d(np.arange(len(train)), _in_other(train, other, train.hashes(), other.hashes()))


def _in_other(train: EncodedSplit, other: EncodedSplit, th: np.ndarray, oh: np.ndarray) -> np.ndarray:
    """The train rows whose text key occurs in `other` (`th`, `oh`: their `hashes()`): hashes first, texts checked
    where they meet."""
    hits = np.flatnonzero(np.isin(th, oh))
    if len(hits):
        theirs = set(other.keys_at(np.flatnonzero(np.isin(oh, th[hits]))))
        hits = hits[np.fromiter((k in theirs for k in train.keys_at(hits)), dtype=bool, count=len(hits))]
    return hits


def few_shot_subset(train: EncodedSplit, cfg: DataConfig, seed: int, names: list[str], multi: bool,
                    freq: np.ndarray, notes: list[str]) -> EncodedSplit:
    """`data.examples_per_class` then `data.max_train_examples` applied to train (stratified, seeded)."""
    if cfg.examples_per_class is not None:
        idx = per_class_subset(strata(train.ids, multi, freq), cfg.examples_per_class, seed + 3, names, multi)
        train = train.take(idx)
        note(notes, f"train: {cfg.examples_per_class} examples per class, {len(idx):,} in all "
                     f"(drawn with training.seed {seed}).")
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        idx = subset_stratified(strata(train.ids, multi, freq), cfg.max_train_examples, seed + 4)
        note(notes, f"train: limited to {len(idx):,} of {len(train):,} examples (data.max_train_examples, "
                     f"stratified, seed {seed + 4}).")
        train = train.take(idx)
    return train
