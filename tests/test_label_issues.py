"""`textxfer data issues`: out-of-fold probabilities, cleanlab's ranking, row numbers of the file, the files written
and the refusals (too few rows for the folds, multi-label, no cleanlab)."""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from textxfer.cli.main import cli
from textxfer.core.errors import UserError
from textxfer.tools.label_issues import CSV_COLUMNS, find_issues, rank_issues, write_outputs
from textxfer.tools.out_of_fold import check_folds, out_of_fold_probabilities, read_training_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def blobs(n_per_class: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters, one per class, in 16 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_classes, 16))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(0, 1, size=(len(y), 16)), y


def test_flipped_labels_of_separable_classes_are_found():
    x, y = blobs(100, 3, seed=0)
    rng = np.random.default_rng(1)
    flipped = np.sort(rng.choice(len(y), 30, replace=False))
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 3, size=30)) % 3
    probs = out_of_fold_probabilities(x, noisy, 3, folds=5, seed=0, l2=0.1)
    assert probs.shape == (300, 3) and np.allclose(probs.sum(1), 1)
    found = rank_issues(noisy, probs)
    hits = len(set(found.tolist()) & set(flipped.tolist()))
    assert hits >= 24 and hits >= 0.9 * len(found), (hits, len(found))  # recall >= 0.8, precision >= 0.9
    given = probs[found, noisy[found]]
    assert np.all(np.diff(given) >= 0), "ranked by the probability of the given label, lowest first"


def test_out_of_fold_means_a_row_never_scores_its_own_label():
    """A row whose features are unique to it (a one-hot column of its own) cannot be predicted from itself."""
    n = 40
    y = np.array([0, 1] * (n // 2))
    x = np.eye(n) * 10
    probs = out_of_fold_probabilities(x, y, 2, folds=4, seed=0, l2=0.1)
    assert np.allclose(probs, 0.5, atol=0.1)


def test_class_with_fewer_rows_than_folds_is_refused_by_name():
    y = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(UserError, match=r"5 folds: 'rare' \(3 rows\).*lower --folds to 3"):
        check_folds(y, ["a", "b", "rare"], 5, "train.csv")
    check_folds(y, ["a", "b", "rare"], 3, "train.csv")
    with pytest.raises(UserError, match="at least 2 folds"):
        check_folds(y, ["a", "b", "rare"], 1, "train.csv")


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def recipe_file(tmp_path: Path, model: Path, train: Path, **data) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": str(model), "max_length": 16, "pooling": "mean"},
                                    "data": {"train": str(train), "text_column": "text", "label_column": "label",
                                             **data},
                                    "training": {"head_l2": 1.0}, "output_dir": str(tmp_path / "out")}))
    return path


def test_rows_are_data_rows_of_the_file_even_with_skipped_rows(tmp_path, tiny_models):
    """Embeddings given (as the benchmark does): the flagged `row`s are the file's 0-based data rows, counted
    before a row with no label is skipped, and each carries that row's text and given label."""
    rows = [(f"text {i}", "a" if i < 30 else "b") for i in range(60)]
    rows.insert(5, ("no label here", ""))  # data row 5, skipped under data.skip_bad_rows
    wrong = {12: "b", 44: "a"}  # data rows (after the insert) whose label is the other class
    for r, label in wrong.items():
        rows[r] = (rows[r][0], label)
    train = write_rows(tmp_path / "train.csv", rows)
    recipe = recipe_file(tmp_path, tiny_models["bert"], train, skip_bad_rows=True)
    usable = [i for i, (_, label) in enumerate(rows) if label]
    truth = np.array([0 if i <= 30 else 1 for i in usable])  # the true class of each usable row
    features = np.eye(2)[truth] * 5 + np.random.default_rng(0).normal(0, 0.3, size=(len(usable), 2))
    found = find_issues(str(recipe), folds=5, embeddings=features)
    assert sorted(x.row for x in found.issues) == sorted(wrong)
    for x in found.issues:
        assert x.text == rows[x.row][0] and x.given == wrong[x.row] and x.suggested != x.given
        assert 0.5 < x.confidence <= 1 and x.given_probability < 0.5
    assert found.rows == 60 and found.counts == {"a": 30, "b": 30}


def test_command_writes_csv_and_report_section(tmp_path, tiny_models):
    rows = [(f"good film {i}" if i % 2 else f"bad plot {i}", "pos" if i % 2 else "neg") for i in range(40)]
    rows[3] = (rows[3][0], "neg")  # an odd row (pos words) labelled neg
    train = write_rows(tmp_path / "train.csv", rows)
    recipe = recipe_file(tmp_path, tiny_models["bert"], train)
    out = tmp_path / "issues"
    result = CliRunner().invoke(cli, ["data", "issues", str(recipe), "--output-dir", str(out), "--folds", "4"])
    assert result.exit_code == 0, result.output
    with open(out / "label_issues.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert table, "row 3 (pos words, labelled neg) or another row is flagged"
    assert list(table[0]) == CSV_COLUMNS
    for line in table:
        row = int(line["row"])
        assert line["text"] == rows[row][0] and line["given_label"] == rows[row][1]
        assert line["suggested_label"] in {"pos", "neg"} - {line["given_label"]}
    section = (out / "label_issues.md").read_text()
    assert section.startswith("## Suspected label errors") and "| given label | rows | flagged | share |" in section
    assert f"{len(table)} of 40 rows" in result.output


def test_command_refuses_too_few_rows_for_the_folds(tmp_path, tiny_models):
    rows = [(f"text {i}", "common") for i in range(20)] + [("odd one", "rare"), ("odd two", "rare")]
    recipe = recipe_file(tmp_path, tiny_models["bert"], write_rows(tmp_path / "train.csv", rows))
    result = CliRunner().invoke(cli, ["data", "issues", str(recipe), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "'rare' (2 rows)" in result.output and "5 folds" in result.output
    assert not (tmp_path / "o").exists()


def test_multi_label_is_refused(tmp_path, tiny_models):
    rows = [(f"text {i}", "a,b" if i % 2 else "a") for i in range(20)]
    recipe = recipe_file(tmp_path, tiny_models["bert"], write_rows(tmp_path / "train.csv", rows), multi_label=True)
    with pytest.raises(UserError, match="multi_label"):
        find_issues(str(recipe))


def test_missing_cleanlab_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    with pytest.raises(UserError, match=r"textxfer\[labels\]"):
        rank_issues(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))


def test_training_rows_keep_file_order_and_label_order(tmp_path):
    from textxfer.config.reading import load_recipe

    train = write_rows(tmp_path / "t.csv", [("x", "b"), ("y", "a"), ("z", "b")])
    cfg = load_recipe(data={"model": {"name": "m"}, "data": {"train": str(train), "text_column": "text",
                                                               "label_column": "label"}}).data
    rows = read_training_rows(cfg)
    assert rows.texts == ["x", "y", "z"] and rows.labels == ["a", "b"] and rows.targets.tolist() == [1, 0, 1]
    assert rows.rows == [0, 1, 2]


def test_outputs_to_an_unwritable_place_are_a_user_error(tmp_path):
    from textxfer.tools.label_issues import IssuesFound

    blocker = tmp_path / "file"
    blocker.write_text("")
    found = IssuesFound([], "t.csv", 0, ["a"], {"a": 0}, 5, "m", "mean", 1.0, 0.5)
    with pytest.raises(UserError, match="writable --output-dir"):
        write_outputs(found, blocker / "sub")


def test_best_out_of_fold_takes_the_penalty_with_the_lowest_log_loss():
    """15% of the labels flipped and 100 dimensions of noise beside the 16 that matter: the weakest penalty fits
    the noise, is sure of every answer and its log loss is worse than a stronger one's; the chosen probabilities
    are exactly that penalty's."""
    from textxfer.tools.out_of_fold import best_out_of_fold

    rng = np.random.default_rng(3)
    x, y = blobs(150, 3, seed=2)
    x = np.hstack([x, rng.normal(0, 1, size=(len(y), 100))])
    noisy = y.copy()
    flip = rng.choice(len(y), 70, replace=False)
    noisy[flip] = (y[flip] + 1) % 3
    grid = (1e-2, 1.0, 100.0)
    probs, l2, loss = best_out_of_fold(x, noisy, 3, folds=5, seed=0, grid=grid)
    losses = {}
    for g in grid:
        p = out_of_fold_probabilities(x, noisy, 3, folds=5, seed=0, l2=g)
        losses[g] = float(-np.log(np.clip(p[np.arange(len(noisy)), noisy], 1e-12, 1)).mean())
    assert l2 == min(losses, key=losses.get) and loss == pytest.approx(losses[l2])
    assert l2 != 1e-2 and losses[1e-2] > loss + 0.05, losses
    assert np.allclose(probs, out_of_fold_probabilities(x, noisy, 3, folds=5, seed=0, l2=l2))


def test_best_out_of_fold_says_how_far_its_heads_are(monkeypatch, caplog):
    from textxfer.tools.out_of_fold import best_out_of_fold

    monkeypatch.setattr("textxfer.core.progress.LOG_MIN_SECONDS", 0.0)  # a line every 5% of this quick search
    x, y = blobs(60, 3, seed=1)
    with caplog.at_level(logging.INFO, logger="textxfer"):
        best_out_of_fold(x, y, 3, folds=5, seed=0, grid=(1.0, 10.0, 100.0, 1000.0))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("out-of-fold heads: ")]
    assert lines[0].startswith("out-of-fold heads: 5% (1 of 20 heads),") and " left" in lines[0]
    assert lines[-1].startswith("out-of-fold heads: 95% (19 of 20 heads),") and len(lines) == 19  # not at 100%
    assert "best" not in lines[4] and ", best head_l2 1 (log loss 0." in lines[5]  # once penalty 1's 5 heads are done


def contrastive_recipe(tmp_path: Path, model: Path, train: Path) -> Path:
    path = tmp_path / "contrastive.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model), "max_length": 16, "pooling": "mean"},
        "data": {"train": str(train), "text_column": "text", "label_column": "label"},
        "strategy": {"name": "freeze", "freeze_layers": 1},
        "training": {"head_l2": 1.0, "epochs": 2, "batch_size": 8, "seed": 0,
                     "contrastive": {"epochs": 6, "batch_size": 8, "learning_rate": 1e-3}},
        "output_dir": str(tmp_path / "out")}))
    return path


def test_the_inner_tuning_keeps_its_run_advice_to_itself():
    """A body tuned for `data issues` is a training whose own advice (too few classifier steps, a report without
    validation files) is about nothing the user runs: dropped while it trains, and only then."""
    from textxfer.tools.out_of_fold import _without_run_advice

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("textxfer")
    logger.addHandler(handler)
    try:
        with _without_run_advice():
            logger.warning("training makes only 3 optimizer step(s)")
            logging.getLogger("textxfer.outputs.report").info("report: %s", "predictions/validation.jsonl missing")
            logger.warning("data issues: tuning")
        logger.warning("training makes only 3 optimizer step(s)")
    finally:
        logger.removeHandler(handler)
    assert seen == ["data issues: tuning", "training makes only 3 optimizer step(s)"]


def test_tune_passes_move_the_embeddings_and_are_reported(tmp_path, tiny_models):
    """`tune_passes` 0 is the pretrained body (the recipe's embeddings); 1 runs the recipe's contrastive stage once
    over the rows first: the embeddings differ, same-class rows come closer together than other-class rows, and the
    report says the body was tuned. A recipe without the stage ignores the option."""
    from textxfer.config.reading import load_recipe
    from textxfer.tools.label_issues import report_section
    from textxfer.tools.out_of_fold import recipe_embeddings, tuned_embeddings

    words = {"pos": ["good", "great", "happy", "fine"], "neg": ["bad", "awful", "poor", "sad"]}
    filler = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actor"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        label = "pos" if i % 2 else "neg"
        rows.append((" ".join([*rng.choice(filler, 3), rng.choice(words[label])]), label))
    train = write_rows(tmp_path / "train.csv", rows)
    r = load_recipe(str(contrastive_recipe(tmp_path, tiny_models["bert"], train)))
    data = read_training_rows(r.data)
    plain = tuned_embeddings(r, data, 0, device="cpu")
    assert np.allclose(plain, recipe_embeddings(r, data.texts, None, data.labels, device="cpu"), atol=1e-5)
    tuned = tuned_embeddings(r, data, 1, device="cpu")
    assert tuned.shape == plain.shape and not np.allclose(tuned, plain, atol=1e-3)

    def separation(z):
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        sim = z @ z.T
        same = data.targets[:, None] == data.targets[None, :]
        off = ~np.eye(len(z), dtype=bool)
        return sim[same & off].mean() - sim[~same].mean()
    assert separation(tuned) > separation(plain)

    found = find_issues(r, folds=4, tune_passes=1, retune=False)
    assert found.tune_passes == 1 and "tuned by 1 pass(es)" in report_section(found)
    assert found.retuned_without is None and "tuned without" not in report_section(found)
    plain_recipe = load_recipe(str(recipe_file(tmp_path, tiny_models["bert"], train)))
    found = find_issues(plain_recipe, folds=4, tune_passes=1)
    assert found.tune_passes == 0 and "pretrained, not tuned" in report_section(found)


def test_cross_fit_never_embeds_a_row_with_a_body_tuned_on_it():
    """A fake tuner marks each row it embeds with 1 when that row was among the rows it tuned on: every cross-fitted
    embedding is 0 there. The two halves are disjoint, cover every row, keep the class mix, are tuned on once
    each (together: every row once, the cost of one tuning over all rows), and `groups` names the body."""
    from textxfer.tools.cross_fit import cross_fitted_embeddings

    y = np.array([0] * 31 + [1] * 50 + [2] * 19)
    calls: list[np.ndarray] = []

    def tune(fit, embed):
        calls.append(np.asarray(fit))
        seen = set(np.asarray(fit).tolist())
        return [np.array([[float(i in seen), len(calls) - 1, i] for i in positions]) for positions in embed]

    fitted = cross_fitted_embeddings(y, tune, seed=0)
    assert len(calls) == 2 and np.all(fitted.features[:, 0] == 0)
    assert np.array_equal(fitted.features[:, 2], np.arange(len(y))), "each row's own embedding, in row order"
    assert np.array_equal(fitted.features[:, 1], fitted.groups)
    a, b = fitted.parts
    assert not set(a.tolist()) & set(b.tolist()) and sorted([*a, *b]) == list(range(len(y)))
    assert sorted([*calls[0], *calls[1]]) == list(range(len(y)))
    assert np.all(np.abs(np.bincount(y[a], minlength=3) - np.bincount(y[b], minlength=3)) <= 1)
    for h in (0, 1):
        assert np.all(fitted.groups[fitted.parts[1 - h]] == h)
    again = cross_fitted_embeddings(y, lambda fit, embed: [np.zeros((len(p), 1)) for p in embed], seed=0)
    assert all(np.array_equal(p, q) for p, q in zip(again.parts, fitted.parts, strict=True)), "seeded: the same halves"


def test_heads_never_mix_the_groups_of_cross_fitted_rows():
    """Two groups whose embedding spaces disagree (the feature that means class 1 in one means class 0 in the
    other): heads kept within each group score nearly every row right; one head over both could not."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 100)
    groups = np.repeat([0, 1], 100)
    sign = np.where(groups == 0, 1.0, -1.0)
    x = (sign * (2 * y - 1))[:, None] * 3 + rng.normal(0, 0.5, size=(200, 1))
    within = out_of_fold_probabilities(x, y, 2, folds=5, seed=0, l2=1.0, groups=groups)
    mixed = out_of_fold_probabilities(x, y, 2, folds=5, seed=0, l2=1.0)
    assert (within.argmax(1) == y).mean() > 0.95 and (mixed.argmax(1) == y).mean() < 0.7


def test_cross_fit_needs_two_folds_of_rows_per_class_in_each_half():
    from textxfer.tools.cross_fit import can_cross_fit

    assert can_cross_fit(np.array([0] * 10 + [1] * 12), folds=5)
    assert not can_cross_fit(np.array([0] * 9 + [1] * 12), folds=5)
    assert can_cross_fit(np.array([0] * 8 + [2] * 8), folds=4), "an empty class id is no class"


def test_command_cross_fits_and_writes_its_files(tmp_path, tiny_models):
    """`data issues --tune-passes 1` on a recipe with a contrastive stage: --cross-fit (the report says so) and
    --no-cross-fit (one body tuned on every row) both write label_issues.csv with the file's rows; the default is
    the library's."""
    from textxfer.tools.label_issues import DEFAULT_CROSS_FIT

    words = {"pos": ["good", "great", "happy", "fine"], "neg": ["bad", "awful", "poor", "sad"]}
    rng = np.random.default_rng(1)
    rows = []
    for i in range(48):
        label = "pos" if i % 2 else "neg"
        rows.append((" ".join(["the", "film", rng.choice(words[label])]), label))
    rows[5] = (rows[5][0], "neg")  # pos words labelled neg
    recipe = contrastive_recipe(tmp_path, tiny_models["bert"], write_rows(tmp_path / "train.csv", rows))
    for flag, crossed in (([], DEFAULT_CROSS_FIT), (["--cross-fit"], True), (["--no-cross-fit"], False)):
        out = tmp_path / f"issues{flag}"
        result = CliRunner().invoke(cli, ["data", "issues", str(recipe), "--output-dir", str(out), "--folds", "4",
                                          "--tune-passes", "1", *flag])
        assert result.exit_code == 0, result.output
        with open(out / "label_issues.csv", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        for line in table:
            assert line["text"] == rows[int(line["row"])][0] and line["given_label"] == rows[int(line["row"])][1]
        section = (out / "label_issues.md").read_text()
        assert "tuned by 1 pass(es)" in section
        assert ("one body per half of the rows" in section) == crossed
        assert ("folds of the same half" in section) == crossed


def test_second_tuning_leaves_out_exactly_the_rows_the_first_ranking_flagged(tmp_path, monkeypatch):
    """The body is tuned twice (fake tuner, no model): first on every row, then on every row but those the first
    ranking flagged; the second body embeds every row, in row order, and the final ranking reads its embeddings.
    The first body's embeddings let the wrong labels pull their rows (half of them look right); the second's do
    not, so the second ranking finds the flipped rows the first missed. The report names the rows held out."""
    from textxfer.config.reading import load_recipe
    from textxfer.tools import out_of_fold
    from textxfer.tools.label_issues import report_section

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 60)
    flipped = np.sort(rng.choice(len(truth), 16, replace=False))
    given = truth.copy()
    given[flipped] = 1 - truth[flipped]
    train = write_rows(tmp_path / "train.csv", [(f"text {i}", "ab"[g]) for i, g in enumerate(given)])
    noise = rng.normal(0, 0.4, size=(len(truth), 4))
    calls: list[np.ndarray] = []

    def fake_tune(recipe, rows, fit, embed, passes, device=None):
        fit = np.asarray(fit)
        calls.append(fit)
        centre = truth.astype(float) * 4
        if len(calls) == 1:  # a body tuned on every label: half the wrong ones pulled their rows to their label
            pulled = flipped[::2]
            centre[pulled] = given[pulled] * 4
        return [np.column_stack([centre[p], noise[p]]) for p in embed]

    monkeypatch.setattr(out_of_fold, "tune_and_embed", fake_tune)
    r = load_recipe(str(contrastive_recipe(tmp_path, tmp_path / "unused-model", train)))
    once = find_issues(r, folds=5, tune_passes=1, retune=False)
    calls.clear()
    found = find_issues(r, folds=5, tune_passes=1)
    first_flags = {x.row for x in once.issues}
    assert len(calls) == 2 and np.array_equal(calls[0], np.arange(len(truth)))
    assert np.array_equal(calls[1], np.setdiff1d(np.arange(len(truth)), sorted(first_flags)))
    assert found.retuned_without == len(first_flags)
    assert f"tuned without the {len(first_flags)} rows a first ranking flagged" in report_section(found)
    assert first_flags < set(flipped.tolist()), "the first ranking misses the pulled rows"
    assert {x.row for x in found.issues} == set(flipped.tolist()), "the second finds every flipped row"


def test_second_tuning_is_skipped_when_a_class_would_be_left_without_rows():
    from textxfer.tools.filtered_tuning import kept_rows, retuned_embeddings

    y = np.array([0] * 10 + [1] * 3)

    def tune(fit, embed):
        raise AssertionError("not tuned")
    assert retuned_embeddings(y, np.array([10, 11]), tune) is None
    assert np.array_equal(kept_rows(y, np.array([0, 10])), [*range(1, 10), 11, 12])
