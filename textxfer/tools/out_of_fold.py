"""Out-of-fold class probabilities for every training row, through a recipe's fast path: the backbone's pooled
embeddings (what the recipe's classifier reads) computed once, then the head alone (an L2-penalised logistic
regression, in scikit-learn's units as the recipe's `training.head_l2`) fitted on k-1 folds and applied to the
k-th, for each of k stratified, seeded folds.

A row's probabilities then come from a head that never saw that row's label, which is what ranking suspected
label errors needs (`label_issues`). The recipe's contrastive stage, which tunes the body on the labels it is
given, is not run once per fold (it costs far more than everything else here): `tuned_embeddings` runs it once
over every row, `cross_fit` once on each half of the rows for the other half.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textxfer.config.schema import DataConfig, Recipe
from textxfer.core.errors import UserError
from textxfer.core.progress import ProgressReport

log = logging.getLogger("textxfer")

HEAD_MAX_ITER = 2000
"""L-BFGS iterations of the head: enough to converge on a few thousand embeddings of a few hundred dimensions."""


@dataclass
class TrainingRows:
    """The training file's usable rows as read (no de-duplication, carving or few-shot draw): texts, second
    texts of pairs, class ids, the label names, and each row's 0-based data row in the file (header not
    counted), so a reported row can be found again."""

    texts: list[str]
    pairs: list[str] | None
    targets: np.ndarray
    labels: list[str]
    rows: list[int]
    source: str
    where: list[str]
    """Per row, how an error message names it (`file, row N`)."""
    notes: list[str]


def read_training_rows(cfg: DataConfig) -> TrainingRows:
    """Every usable row of `data.train`, with the recipe's label order (`data.labels`, or the sorted values)."""
    from textxfer.data.labels import build_label_space, declared_labels, encode_labels, normalise_labels
    from textxfer.data.rows import read_table, usable_rows

    if cfg.train is None:
        raise UserError("Recipe key `data.train` is missing: give the training file to check.")
    if cfg.multi_label:
        raise UserError("`data.multi_label: true`: finding label errors handles one label per row for now; set "
                        "`data.multi_label: false` if each row has one label.")
    notes: list[str] = []
    declared = declared_labels(cfg)
    rows = usable_rows(read_table(cfg.train, cfg, "train", notes), cfg, notes, declared)
    keys = normalise_labels(rows, cfg, declared, notes)
    table = rows.table
    column = table.names[cfg.label_column] if isinstance(cfg.label_column, int) and table.header \
        and cfg.label_column < len(table.names) else cfg.label_column
    space = build_label_space(cfg, keys, table.class_names.get(column), [keys], notes)
    ids = encode_labels(keys, rows, space, "train")
    return TrainingRows(rows.texts, rows.pairs, np.asarray([r[0] for r in ids], dtype=np.int64), space.names,
                        list(rows.index), table.source, [rows.where(i) for i in range(len(rows.texts))], notes)


def check_folds(targets: np.ndarray, labels: list[str], folds: int, source: str) -> None:
    """Every class needs at least `folds` rows (one in each held-out fold); refuse naming the classes that lack them."""
    if folds < 2:
        raise UserError(f"--folds is {folds}: out-of-fold probabilities need at least 2 folds (5 is usual).")
    counts = np.bincount(targets, minlength=len(labels))
    short = [(labels[j], int(counts[j])) for j in range(len(labels)) if 0 < counts[j] < folds]
    if short:
        listed = ", ".join(f"{name!r} ({n} row{'s' if n != 1 else ''})" for name, n in short)
        fewest = min(n for _, n in short)
        lower = f"lower --folds to {fewest}" if fewest >= 2 else "drop the single-row classes"
        raise UserError(f"{source}: {len(short)} class(es) have fewer rows than the {folds} folds: {listed}. Each "
                        f"class needs a row in every fold. Add rows of those classes, {lower}, or merge classes "
                        "with a `data.labels` mapping.")
    if int((counts > 0).sum()) < 2:
        present = [labels[j] for j in np.flatnonzero(counts)]
        raise UserError(f"{source}: every row has the label {present[0]!r}; finding label errors needs two or more "
                        "classes.")


def recipe_embeddings(recipe: Recipe, texts: list[str], pairs: list[str] | None, labels: list[str],
                      device: str | None = None) -> np.ndarray:
    """The embeddings the recipe's classifier would read from its pretrained backbone (`model.name`, with
    `model.pooling` as training adds it), for every text."""
    import torch

    from textxfer.backbones.load import load_classifier, resolve_model_name
    from textxfer.backbones.pooling import add_mean_pooling, known_pooling_layer
    from textxfer.modalities.text.embeddings import embed_texts
    from textxfer.modalities.text.modality import build_tokenizer

    m = recipe.model
    path = resolve_model_name(m.name)
    tokenizer = build_tokenizer(path, recipe)
    model, parts = load_classifier(path, labels, revision=m.revision, trust_remote_code=m.trust_remote_code)
    parts = known_pooling_layer(model, parts)
    if m.pooling == "mean":
        add_mean_pooling(model, parts)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    features, _ = embed_texts(model, tokenizer, texts, pairs, m.max_length, device=device)
    return features


TUNE_MAX_ROWS = 4000
"""Rows the contrastive pass of `tuned_embeddings` reads at most (a stratified, seeded draw): its cost grows with
the rows, its gain does not beyond a few thousand."""


def tuned_embeddings(recipe: Recipe, rows: TrainingRows, passes: int, device: str | None = None) -> np.ndarray:
    """The embeddings of every row after `passes` passes of the recipe's contrastive stage over the rows (at most
    `TUNE_MAX_ROWS` of them) with their given labels; the recipe's pretrained embeddings when it has no
    contrastive stage or `passes` is 0.

    The body sees every label once per pass, wrong ones included, before the out-of-fold heads score them: a
    network first fits the pattern the majority of labels share and only later the exceptions, so few passes move
    the embeddings towards each class before they pull a mislabelled row into its wrong class. `cross_fit` avoids
    even that: no row is embedded by a body that saw its label (docs/labelling.md compares them)."""
    if passes <= 0 or recipe.training.contrastive is None:
        return recipe_embeddings(recipe, rows.texts, rows.pairs, rows.labels, device)
    every = np.arange(len(rows.texts))
    return tune_and_embed(recipe, rows, every, [every], passes, device)[0]


def tune_and_embed(recipe: Recipe, rows: TrainingRows, fit: np.ndarray, embed: list[np.ndarray], passes: int,
                   device: str | None = None) -> list[np.ndarray]:
    """Tune the recipe's body by `passes` passes of its contrastive stage over the rows at positions `fit` (at most
    `TUNE_MAX_ROWS` of them, a stratified seeded draw) with their given labels, then embed the rows at each array
    of positions in `embed` with it: one [len(positions), hidden] array each. The recipe must have a contrastive
    stage and `passes` must be at least 1."""
    import tempfile

    import pandas as pd

    from textxfer.modalities.text.embeddings import embed_texts
    from textxfer.modalities.text.predict import load
    from textxfer.tools.train import train

    fit = np.asarray(fit, dtype=np.int64)
    frame = {"text": [rows.texts[i] for i in fit], "label": [rows.labels[int(rows.targets[i])] for i in fit]}
    overrides = ["data.text_column=text", "data.label_column=label", "data.labels=null", "data.validation=null",
                 "data.test=null", "data.validation_split=0", "data.test_split=0", "data.examples_per_class=null",
                 f"data.max_train_examples={TUNE_MAX_ROWS}", "data.skip_bad_rows=false",
                 f"training.contrastive.epochs={passes}", "training.contrastive.min_examples=0",
                 "training.epochs=1", "training.checkpoint_every=null"]
    if rows.pairs is not None:
        frame["text_pair"] = [rows.pairs[i] for i in fit]
        overrides.append("data.text_pair_column=text_pair")
    if getattr(recipe.data, "unlabelled", None) is not None:
        overrides.append("data.unlabelled=null")
    log.info(f"data issues: {passes} pass(es) of the contrastive stage over {min(len(fit), TUNE_MAX_ROWS):,} "
             "rows tune the body before the out-of-fold heads")
    with tempfile.TemporaryDirectory(prefix="textxfer-issues-") as tmp, _without_run_advice():
        result = train(recipe, overrides, output_dir=Path(tmp) / "tuned", train=pd.DataFrame(frame))
        clf = load(result.output_dir, device=device)
        out = []
        for positions in embed:
            texts = [rows.texts[i] for i in positions]
            pairs = None if rows.pairs is None else [rows.pairs[i] for i in positions]
            features, _ = embed_texts(clf.model, clf.tokenizer, texts, pairs, clf.max_length, device=clf.device)
            out.append(features)
    return out


class _RunAdvice(logging.Filter):
    """Drops what a training says about its own run (too few classifier steps, files its report lacks): the
    tuning inside `data issues` keeps only its body, so that advice is about nothing the user runs."""

    PREFIXES = ("training makes only", "report: ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


class _without_run_advice:
    """While tuning a body for `data issues`, every handler of the textxfer and root loggers drops `_RunAdvice`."""

    def __enter__(self):
        self.quiet = _RunAdvice()
        self.handlers = [*logging.getLogger("textxfer").handlers, *logging.getLogger().handlers]
        for handler in self.handlers:
            handler.addFilter(self.quiet)
        return self

    def __exit__(self, *exc) -> None:
        for handler in self.handlers:
            handler.removeFilter(self.quiet)


def fit_head(features: np.ndarray, targets: np.ndarray, l2: float, seed: int):
    """The recipe's head on fixed embeddings: multinomial logistic regression with scikit-learn's C = 1/l2
    (`training.head_l2`; 0 = no penalty). Returns the fitted scikit-learn estimator."""
    from sklearn.linear_model import LogisticRegression

    kwargs = {"C": 1.0 / l2} if l2 > 0 else {"penalty": None}
    return LogisticRegression(max_iter=HEAD_MAX_ITER, random_state=seed, **kwargs).fit(features, targets)


def head_probabilities(head, features: np.ndarray, n_classes: int) -> np.ndarray:
    """[n, n_classes] probabilities of a fitted head; classes it never saw get 0."""
    out = np.zeros((len(features), n_classes), dtype=np.float64)
    out[:, head.classes_] = head.predict_proba(features)
    return out


def out_of_fold_probabilities(features: np.ndarray, targets: np.ndarray, n_classes: int, folds: int, seed: int,
                              l2: float, groups: np.ndarray | None = None,
                              progress: ProgressReport | None = None) -> np.ndarray:
    """[n, n_classes] probabilities, each row's from the head fitted on the other folds (stratified, seeded).

    `groups` (one id per row): rows whose embeddings come from different bodies (`cross_fit`) live in different
    spaces, so each group gets its own folds and heads, and no head reads two groups' rows. `progress` counts one
    unit per head fitted."""
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(targets), n_classes), dtype=np.float64)
    ids = np.zeros(len(targets), dtype=np.int64) if groups is None else np.asarray(groups)
    for group in np.unique(ids):
        members = np.flatnonzero(ids == group)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (fit_idx, held_idx) in enumerate(splitter.split(features[members], targets[members])):
            fit_rows, held_rows = members[fit_idx], members[held_idx]
            head = fit_head(features[fit_rows], targets[fit_rows], l2, seed + k)
            probs[held_rows] = head_probabilities(head, features[held_rows], n_classes)
            if progress is not None:
                progress.update()
    return probs


HEAD_L2_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
"""Penalties `best_out_of_fold` tries. A recipe's `training.head_l2` is set for training on a few examples; ranking
label errors needs probabilities that are honest on thousands, where a weak penalty makes the head sure of every
answer (2,000 SST-2 rows with 200 flipped: head_l2 10 flagged 381 rows, 300 flagged 253; docs/labelling.md)."""


def log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log probability of the given labels: how well probabilities fit them (lower is better)."""
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1.0)).mean())


def best_out_of_fold(features: np.ndarray, targets: np.ndarray, n_classes: int, folds: int, seed: int,
                     grid: tuple[float, ...] = HEAD_L2_GRID,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(probabilities, head_l2, log loss): the out-of-fold probabilities of the penalty in `grid` whose
    probabilities have the lowest log loss against the given labels (the same folds for every penalty; `groups`
    as `out_of_fold_probabilities`, one penalty for all of them). One number chosen on thousands of rows: the
    probabilities stay out-of-fold in all but that choice."""
    best: tuple[np.ndarray, float, float] | None = None
    heads = len(grid) * folds * (1 if groups is None else len(np.unique(groups)))
    # many rows and many classes make minutes of fitting: say how far it is
    with ProgressReport("out-of-fold heads", heads, "heads") as progress:
        for l2 in grid:
            probs = out_of_fold_probabilities(features, targets, n_classes, folds, seed, l2, groups, progress)
            loss = log_loss(probs, targets)
            if best is None or loss < best[2]:
                best = (probs, l2, loss)
            progress.note(best=f"head_l2 {best[1]:g} (log loss {best[2]:.4f})")
    assert best is not None
    return best
