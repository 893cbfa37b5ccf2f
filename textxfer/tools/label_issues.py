"""`textxfer data issues`: rank the training rows whose label is probably wrong.

Out-of-fold probabilities (`out_of_fold`: the recipe's embeddings, the head fitted per fold) give, for every
row, what a model that never saw that row's label thinks of it. The body that embeds the rows is tuned by the
recipe's contrastive stage on the given labels, then tuned again without the rows a first ranking flagged
(`filtered_tuning`), so that the wrong labels do not shape the embeddings that should expose them. cleanlab's
confident learning (`cleanlab.filter.find_label_issues`) compares the probabilities with the given labels: it
estimates from per-class thresholds how many rows of each class carry each other label and flags that many, the
least likely under their given label first. The flagged rows go to `label_issues.csv` (worst first) and a summary
to `label_issues.md`, the report's section on them. Nothing is changed in the data: the user reviews the rows and
fixes the file.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

DEFAULT_FOLDS = 5
DEFAULT_TUNE_PASSES = 1
"""Passes of the recipe's contrastive stage over the labelled rows before they are embedded (docs/labelling.md)."""
DEFAULT_CROSS_FIT = False
"""Tune one body on each half of the rows and embed the other half with it (`cross_fit`). Off: a body tuned on
half the rows separates the classes less well, which costs more than it gains (docs/labelling.md)."""
DEFAULT_RETUNE = True
"""Rank twice: tune the body again on the rows the first ranking did not flag, then rank every row on its
embeddings (`filtered_tuning`; docs/labelling.md compares it with one tuning on every row)."""
FILTER_BY = "both"
"""cleanlab's rule for which rows to flag: `both` flags a row when it is among the least likely under its given
label both for its given class and for the class suggested, as many as confident learning estimates are wrong
in each (docs/labelling.md compares the rules on the benchmark: more recall than `confident_learning` at
nearly its precision on TREC-6 and AG News)."""
CSV_NAME = "label_issues.csv"
REPORT_NAME = "label_issues.md"
CSV_COLUMNS = ["row", "text", "given_label", "suggested_label", "confidence", "given_label_probability"]
REPORT_ROWS = 20
"""Rows shown in the report section (all of them are in the CSV)."""


@dataclass
class Issue:
    """One suspected label error: the 0-based data row of the training file (header not counted), its text, the
    label given and the one the out-of-fold model suggests, the model's probability for the suggestion
    (`confidence`) and for the given label."""

    row: int
    text: str
    given: str
    suggested: str
    confidence: float
    given_probability: float


@dataclass
class IssuesFound:
    """What `find_issues` found, with what the report section says about how."""

    issues: list[Issue]
    source: str
    rows: int
    labels: list[str]
    counts: dict[str, int]
    folds: int
    model: str
    pooling: str
    head_l2: float
    oof_accuracy: float
    tune_passes: int = 0
    """Passes of the contrastive stage that tuned the body before embedding (0: the pretrained body)."""
    cross_fit: bool = False
    """Whether each half of the rows was embedded by a body tuned on the other half (heads kept within halves)."""
    retuned_without: int | None = None
    """Rows the first ranking flagged, whose labels the second tuning left out (None: ranked once)."""
    notes: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    """[rows, classes] out-of-fold probabilities the ranking read (not written out: benchmarks compare rules on them)."""
    targets: np.ndarray | None = None
    """Each row's given class id, in `labels`' order."""


def _cleanlab_filter():
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise UserError("`textxfer data issues` ranks label errors with cleanlab, which is not installed. Install "
                        "the extra: pip install 'textxfer[labels]'.") from None
    return find_label_issues


def rank_issues(targets: np.ndarray, probs: np.ndarray, n_jobs: int = 1, filter_by: str = FILTER_BY) -> np.ndarray:
    """Positions of the rows cleanlab flags (`filter_by`: one of cleanlab's rules), the least likely under their
    given label first. Classes without a row are left out of what cleanlab sees (it needs every class it is shown
    to occur)."""
    find_label_issues = _cleanlab_filter()
    present = np.flatnonzero(np.bincount(targets, minlength=probs.shape[1]))
    compact = np.searchsorted(present, targets)
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(1, keepdims=True), 1e-12)
    return np.asarray(find_label_issues(compact, sub, filter_by=filter_by, return_indices_ranked_by="self_confidence",
                                        n_jobs=n_jobs), dtype=np.int64)


def find_issues(recipe, overrides: list[str] | None = None, folds: int = DEFAULT_FOLDS,
                tune_passes: int = DEFAULT_TUNE_PASSES, embeddings: np.ndarray | None = None,
                cross_fit: bool = DEFAULT_CROSS_FIT, groups: np.ndarray | None = None,
                retune: bool = DEFAULT_RETUNE) -> IssuesFound:
    """Suspected label errors of the recipe's `data.train` (every usable row as read: no de-duplication, no
    few-shot draw). `tune_passes`: passes of the recipe's contrastive stage before the rows are embedded (0 = the
    pretrained body). `cross_fit`: the passes tune one body per half of the rows, each embedding the other half
    (`cross_fit.cross_fitted_embeddings`), when every class has 2 x `folds` rows; else one body is tuned on every
    row (`out_of_fold.tuned_embeddings`), and with `retune` a second body is tuned without the rows that body's
    ranking flagged and embeds every row for the final ranking (`filtered_tuning`). `embeddings`: the rows'
    features if already computed (benchmarks; no tuning then), with `groups` (one id per row) when rows of
    different groups come from different bodies; else the recipe's backbone computes them."""
    from textxfer.config.reading import load_recipe
    from textxfer.config.schema import Recipe
    from textxfer.modalities.detect import task_of
    from textxfer.tools.cross_fit import can_cross_fit, cross_fitted_embeddings, recipe_tuner
    from textxfer.tools.filtered_tuning import retuned_embeddings
    from textxfer.tools.out_of_fold import (
        best_out_of_fold,
        check_folds,
        read_training_rows,
        tuned_embeddings,
    )

    r = recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)
    if task_of(r) == "image":
        raise UserError("`textxfer data issues` reads text recipes; this recipe's task is image.")
    rows = read_training_rows(r.data)  # its notes are logged as they are found (data.notes)
    check_folds(rows.targets, rows.labels, folds, rows.source)
    crossed = False
    if embeddings is None:
        log.info(f"data issues: embedding {len(rows.texts):,} rows of {rows.source} with {r.model.name} "
                 f"({r.model.pooling} pooling)")
        tuned = tune_passes if r.training.contrastive is not None and tune_passes > 0 else 0
        if tuned and cross_fit and can_cross_fit(rows.targets, folds):
            log.info("data issues: cross-fitted tuning: a body tuned on each half of the rows embeds the other half")
            fitted = cross_fitted_embeddings(rows.targets, recipe_tuner(r, rows, tune_passes), r.training.seed)
            embeddings, groups, crossed = fitted.features, fitted.groups, True
        else:
            if tuned and cross_fit:
                log.info(f"data issues: a class has fewer than {2 * folds} rows, too few to cross-fit "
                         f"{folds} folds in each half: one body is tuned on every row")
            embeddings = tuned_embeddings(r, rows, tune_passes)
    else:
        tuned = 0
        if len(embeddings) != len(rows.texts):
            raise ValueError(f"{len(embeddings)} embeddings given for {len(rows.texts)} rows")
    probs, head_l2, _ = best_out_of_fold(embeddings, rows.targets, len(rows.labels), folds, r.training.seed,
                                         groups=groups)
    order = rank_issues(rows.targets, probs)
    retuned_without = None
    if tuned and retune and not crossed:
        again = retuned_embeddings(rows.targets, order, recipe_tuner(r, rows, tune_passes))
        if again is None:
            log.info("data issues: the first ranking flagged nearly every row of a class; it stands, the body is "
                     "not tuned again")
        else:
            log.info(f"data issues: tuned again without the {len(again.held_out):,} rows flagged first; ranking "
                     "every row on its embeddings")
            probs, head_l2, _ = best_out_of_fold(again.features, rows.targets, len(rows.labels), folds,
                                                 r.training.seed)
            order = rank_issues(rows.targets, probs)
            retuned_without = len(again.held_out)
    issues = []
    for i in order.tolist():
        given = int(rows.targets[i])
        others = probs[i].copy()
        others[given] = -1.0
        j = int(others.argmax())
        text = rows.texts[i] if rows.pairs is None else f"{rows.texts[i]} [SEP] {rows.pairs[i]}"
        issues.append(Issue(rows.rows[i], text, rows.labels[given], rows.labels[j], float(probs[i, j]),
                            float(probs[i, given])))
    counts = Counter(rows.labels[int(t)] for t in rows.targets)
    return IssuesFound(issues, rows.source, len(rows.texts), rows.labels, {n: counts.get(n, 0) for n in rows.labels},
                       folds, r.model.name, r.model.pooling, head_l2,
                       float((probs.argmax(1) == rows.targets).mean()), tuned, crossed, retuned_without,
                       rows.notes, probs, rows.targets)


# ------------------------------------------------------------------------------------------ files

def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_issues_csv(found: IssuesFound, path: Path) -> Path:
    """label_issues.csv: one line per flagged row, the most suspect first."""
    def write(f):
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for x in found.issues:
            w.writerow([x.row, x.text, x.given, x.suggested, f"{x.confidence:.4f}", f"{x.given_probability:.4f}"])
    _write_atomic(path, write)
    return path


def _md(text: str, limit: int = 120) -> str:
    """A table cell: one line, pipes escaped, long texts cut."""
    t = " ".join(str(text).split()).replace("|", "\\|")
    return t if len(t) <= limit else t[: limit - 1] + "…"


def report_section(found: IssuesFound) -> str:
    """The report's section on suspected label errors, as Markdown."""
    n = len(found.issues)
    by_class = Counter(x.given for x in found.issues)
    moves = Counter((x.given, x.suggested) for x in found.issues)
    tuned = (f"tuned by {found.tune_passes} pass(es) of the recipe's contrastive stage over the given labels"
             if found.tune_passes else "pretrained, not tuned")
    if found.cross_fit:
        tuned += (": one body per half of the rows, each embedding the other half, so no row is embedded by a "
                  "body that saw its label")
    if found.retuned_without is not None:
        tuned += (f", then, from the pretrained body again, tuned without the {found.retuned_without:,} rows a "
                  "first ranking flagged, so that wrong labels do not shape the embeddings that should expose them")
    where = "of the same half " if found.cross_fit else ""
    lines = [
        "## Suspected label errors",
        "",
        f"{n:,} of {found.rows:,} rows of `{found.source}` ({100 * n / max(found.rows, 1):.1f}%) are probably "
        f"mislabelled. Each row was scored by a classifier that never saw its label: the recipe's backbone "
        f"(`{found.model}`, {found.pooling} pooling, {tuned}) embeds every row once, and its head (logistic "
        f"regression, L2 {found.head_l2:g}: of the penalties tried, the one whose out-of-fold probabilities fit "
        f"the given labels best) is trained on {found.folds - 1} of {found.folds} stratified folds "
        f"{where}and scores the fold left out. Out-of-fold accuracy against the given labels: {found.oof_accuracy:.3f}. "
        f"cleanlab's confident learning (rule `{FILTER_BY}`) then estimates how many rows of each class carry each "
        "other label and flags the rows whose given label is least likely, that many.",
        "",
        f"Every flagged row is in `{CSV_NAME}`, the most suspect first (`row`: 0-based data row of the training "
        "file, header not counted). Review them, fix the labels that are wrong, and train again; rows whose "
        "label is right but unusual are worth keeping.",
        "",
        "| given label | rows | flagged | share |",
        "|---|---:|---:|---:|",
    ]
    for name in found.labels:
        rows = found.counts.get(name, 0)
        lines.append(f"| {_md(name, 60)} | {rows:,} | {by_class.get(name, 0):,} | "
                     f"{100 * by_class.get(name, 0) / max(rows, 1):.1f}% |")
    if moves:
        lines += ["", "Most frequent suggestions:", "", "| given | suggested | rows |", "|---|---|---:|"]
        for (given, suggested), count in moves.most_common(10):
            lines.append(f"| {_md(given, 60)} | {_md(suggested, 60)} | {count:,} |")
    if found.issues:
        lines += ["", f"The {min(n, REPORT_ROWS)} most suspect rows:", "",
                  "| row | text | given | suggested | confidence |", "|---:|---|---|---|---:|"]
        for x in found.issues[:REPORT_ROWS]:
            lines.append(f"| {x.row} | {_md(x.text)} | {_md(x.given, 60)} | {_md(x.suggested, 60)} | "
                         f"{x.confidence:.3f} |")
    if found.notes:
        lines += ["", "Notes from reading the data:", ""] + [f"- {_md(note, 400)}" for note in found.notes]
    return "\n".join(lines) + "\n"


def write_outputs(found: IssuesFound, output_dir: str | Path) -> tuple[Path, Path]:
    """label_issues.csv and label_issues.md in `output_dir` (created if needed; other files are left alone)."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_path = write_issues_csv(found, out / CSV_NAME)
        md_path = out / REPORT_NAME
        _write_atomic(md_path, lambda f: f.write(report_section(found)))
    except OSError as e:
        raise UserError(f"Cannot write the label issues to {out} ({e.strerror or e}). Give a writable "
                        "--output-dir.") from None
    return csv_path, md_path
