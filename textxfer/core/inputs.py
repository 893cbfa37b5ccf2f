"""The inputs of `predict`, checked once for every predictor (the PyTorch and ONNX text classifiers, the image
classifier): what counts as one input and what as many, which elements are accepted, and the `top_k` and
`batch_size` options. A mistake is a `UserError` naming the argument and the position, raised before any work,
rather than a tokenizer's or torch's traceback or, worse, a silent wrong result (a lone string read as a list of
characters, a dict read as its keys, a missing table value read as text).

Only the standard library is imported: the ONNX predictor runs without torch, and this is read on every call."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any

from textxfer.core.errors import UserError

MAX_SHOWN = 60
"""Characters of a refused value shown in a message."""


def shown(value: Any) -> str:
    """A refused value as a message shows it: its repr, shortened, and its type unless the repr says it."""
    if value is None:
        return "None"
    if isinstance(value, float) and math.isnan(value):
        return f"NaN ({type(value).__name__}: a missing value, as a table's empty cell reads)"
    kind = type(value)
    builtin = kind.__module__ == "builtins"
    text = repr(value) if builtin else str(value)  # numpy 2's repr of 1.5 is `np.float64(1.5)`: the type says it
    text = text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."
    name = kind.__name__ if builtin else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    return f"{text} ({name})"


def as_list(value: Any, name: str, what: str, one: tuple[type, ...]) -> list:
    """`value` as a list of inputs: a lone instance of `one` is one input (a list of one, so one call shape
    gives one result shape); any other iterable is materialised with `list()` (lists, tuples, generators, numpy
    arrays, pandas Series). Refused, with a `UserError` naming `name`: None, a dict (iterating it gives its keys),
    bytes, anything with more than one dimension (a DataFrame, a 2-D array: which column is meant?) and anything
    not iterable. `what` is how the message calls one element ("a string")."""
    usage = f"give {what} or a list of them, e.g. predict([...])"
    if isinstance(value, one):
        return [value]
    if value is None:
        raise UserError(f"{name} is None, so there is nothing to predict: {usage}.")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise UserError(f"{name} is bytes: decode it to a string first (e.g. {name}.decode('utf-8')), or {usage}.")
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:3])
        raise UserError(f"{name} is a {type(value).__name__} (keys {keys}{', ...' if len(value) > 3 else ''}): "
                        f"iterating it would predict its keys. Pass the values to predict, e.g. "
                        f"predict({name}[key]) or predict(list({name}.values())); {usage}.")
    ndim = getattr(value, "ndim", 1)
    if isinstance(ndim, int) and ndim != 1:
        kind = type(value).__name__
        if ndim == 0:
            raise UserError(f"{name} is a 0-dimensional {kind}: {usage} (a 1-dimensional array or column).")
        raise UserError(f"{name} is a {ndim}-dimensional {kind}: give one dimension, e.g. one column of a "
                        f"DataFrame (df['text']) or one row of an array; {usage}.")
    try:
        iterator = iter(value)
    except TypeError:
        raise UserError(f"{name} is {shown(value)}, not {what} or a list of them: {usage}.") from None
    return list(iterator)


def as_texts(value: Any, name: str = "texts") -> list[str]:
    """The texts to predict as a list of plain `str`: a lone string is one text; a list, tuple, generator, numpy
    array or pandas Series of strings is read in order. Every element must be a string: None, NaN (a missing
    table value), numbers and bytes are refused by position (`texts[1] is None, not a string`) rather than
    converted, since a number read as the text "5" or a missing value read as "nan" would be a silent wrong
    prediction."""
    texts = as_list(value, name, "a string", (str,))
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more element(s) are not strings)" if len(bad) > 1 else ""
        raise UserError(f"{name}[{i}] is {shown(texts[i])}, not a string{more}. Give one string per input: drop or "
                        f"fill in missing values (e.g. df['text'].fillna('')), decode bytes, and convert numbers "
                        f"with str() where they are meant as text.")
    return [t if type(t) is str else str(t) for t in texts]  # numpy.str_ and other subclasses: plain str


def check_pairs(texts: list[str], pairs: Any, pair_column: Any = None) -> list[str] | None:
    """The second texts of a sentence-pair model (`pairs=`), checked like the texts and one per text; None when
    not given. `pair_column`: the model's second-text column when it reads pairs; such a model is never given
    single texts (it would score each text against nothing, a silent wrong result)."""
    if pairs is None:
        if pair_column is not None and texts:
            raise UserError(f"This model reads sentence pairs (its second text was column `{pair_column}` in "
                            "training): give the second texts as pairs=[...], one per text.")
        return None
    pairs = as_texts(pairs, "pairs")
    if len(pairs) != len(texts):
        raise UserError(f"{len(texts)} texts but {len(pairs)} second texts (pairs=): give one second text per text, "
                        "in the same order (a lone string is one).")
    return pairs


def whole_number(value: Any) -> int | None:
    """`value` as an int when it is an integer (int, numpy integer; not a bool, a float or a string), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_top_k(top_k: Any) -> int:
    """`top_k`, the labels returned per input: a whole number of 1 or more (more than there are labels returns
    them all)."""
    k = whole_number(top_k)
    if k is None or k < 1:
        raise UserError(f"top_k is {shown(top_k)}: give a whole number of 1 or more, the labels to return per input "
                        "(1: the best label; len(classifier.labels): every label, best first).")
    return k


def check_batch_size(batch_size: Any, default: int) -> int:
    """`batch_size`, the inputs per forward pass: a whole number of 1 or more, or None for `default`."""
    if batch_size is None:
        return default
    n = whole_number(batch_size)
    if n is None or n < 1:
        raise UserError(f"batch_size is {shown(batch_size)}: give a whole number of 1 or more (the inputs per "
                        f"forward pass), or None for the default ({default}).")
    return n

