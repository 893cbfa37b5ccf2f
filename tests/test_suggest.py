"""`textxfer suggest`: the uncertainty scores, diversity of the chosen texts, the CSV to label, the refusals, and
the one-pass embeddings + logits of a saved model."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from click.testing import CliRunner

from textxfer.cli.main import cli
from textxfer.core.errors import UserError
from textxfer.tools.suggest import CSV_COLUMNS, check_k, choose, kmeans_plus_plus, uncertainty, unique_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_uncertainty_is_one_minus_the_margin():
    probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0]])
    assert np.allclose(uncertainty(probs), [1.0, 0.15, 0.95, 0.0])


def test_multi_label_uncertainty_is_closeness_to_a_threshold():
    probs = np.array([[0.5, 0.99], [0.9, 0.01], [0.3, 0.7]])
    got = uncertainty(probs, multi_label=True, thresholds=np.array([0.5, 0.5]))
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.2) and got[2] == pytest.approx(0.6)


def near_duplicates(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three tight clusters of texts: one of 30 very uncertain near-duplicates, two of 10 a little less
    uncertain, far from it and from each other. Returns (probs, embeddings, cluster of each text)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    cluster = np.repeat([0, 1, 2], [30, 10, 10])
    emb = centres[cluster] + rng.normal(0, 0.01, size=(50, 3))
    p_top = np.where(cluster == 0, 0.51, 0.6) + rng.uniform(0, 0.01, 50)
    probs = np.stack([p_top, 1 - p_top], 1)
    return probs, emb, cluster


def test_badge_spreads_the_choice_where_margin_takes_near_duplicates():
    probs, emb, cluster = near_duplicates()
    margin, _ = choose(probs, emb, 3, "margin")
    badge, score = choose(probs, emb, 3, "badge", seed=0)
    assert set(cluster[margin]) == {0}  # the three most uncertain texts are near-duplicates
    assert set(cluster[badge]) == {0, 1, 2}  # one per cluster
    assert cluster[badge[0]] == 0 and badge[0] == int(np.argmax(score))  # the most informative text first
    assert len(set(badge.tolist())) == 3


def test_badge_prefers_uncertain_texts_among_alike_ones():
    """Equal embeddings: the gradient's length is the uncertainty, so the first text is the most uncertain."""
    probs = np.array([[0.99, 0.01], [0.55, 0.45], [0.8, 0.2]])
    emb = np.ones((3, 4))
    order, _ = choose(probs, emb, 1, "badge")
    assert order.tolist() == [1]


def test_kmeans_plus_plus_is_seeded_and_handles_duplicates():
    factors = np.array([[0.5, -0.5]] * 4)
    emb = np.ones((4, 2))
    picked = kmeans_plus_plus(factors, emb, 3, seed=1)
    assert len(set(picked)) == 3  # all identical: the rest taken in order, never twice
    probs, emb, _ = near_duplicates(1)
    a = choose(probs, emb, 5, "badge", seed=3)[0]
    b = choose(probs, emb, 5, "badge", seed=3)[0]
    assert a.tolist() == b.tolist()


def test_bad_k_is_refused_with_the_sizes():
    with pytest.raises(UserError, match="-k is 0.*10"):
        check_k(0, 10)
    with pytest.raises(UserError, match="The pool has no usable text"):
        check_k(3, 0)
    with pytest.raises(UserError, match=r"3 usable text\(s\), fewer than the 5"):
        check_k(5, 3)
    with pytest.raises(UserError, match="Unknown strategy"):
        choose(np.ones((4, 2)) / 2, np.ones((4, 2)), 2, "nope")


def test_repeated_and_empty_texts_are_left_out():
    kept, rows, empty, repeated = unique_texts(["a", " ", "b", "a ", "c", ""])
    assert kept == ["a", "b", "c"] and rows == [0, 2, 4] and empty == 2 and repeated == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_models):
    from conftest import tiny_recipe, write_tiny_dataset

    import textxfer

    base = tmp_path_factory.mktemp("suggest-run")
    data = write_tiny_dataset(base / "data")
    recipe = tiny_recipe(tiny_models["bert"], data, base / "run", model__pooling="mean", training__epochs=1)
    return textxfer.train(recipe).output_dir


def test_embeddings_and_logits_in_one_pass_match_the_predictor(tiny_run):
    from textxfer.modalities.text.embeddings import embed_texts, encoder_of
    from textxfer.modalities.text.predict import load

    clf = load(tiny_run, device="cpu")
    texts = ["good film", "the plot was very bad", "goal", "a"]
    emb, logits = embed_texts(clf.model, clf.tokenizer, texts, None, clf.max_length, with_logits=True)
    assert np.allclose(logits, clf.logits(texts), atol=1e-5)
    alone, none = embed_texts(clf.model, clf.tokenizer, texts, None, clf.max_length)
    assert none is None and np.allclose(alone, emb, atol=1e-5)
    import torch

    enc = clf.tokenizer(texts[1], return_tensors="pt")
    with torch.no_grad():
        first = encoder_of(clf.model)(**enc).last_hidden_state[0, 0].numpy()
    assert np.allclose(emb[1], first, atol=1e-5)


def test_command_writes_a_csv_ready_to_label(tiny_run, tmp_path):
    pool = tmp_path / "pool.csv"
    texts = [f"{w} film {v}" for w in ("good", "bad", "goal", "plot") for v in ("", "very", "was", "is")]
    pool.write_text("text\n" + "\n".join(texts + [texts[0]]) + "\n")
    out = tmp_path / "next.csv"
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 5
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["label"] == "" for r in rows) and len({r["text"] for r in rows}) == 5
    for r in rows:
        assert texts[int(r["row"])].strip() == r["text"] and float(r["score"]) >= 0


def test_command_refuses_a_pool_smaller_than_k(tiny_run, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("good film\nbad film\ngood film\n")
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "3"])
    assert result.exit_code == 2 and "2 usable text(s), fewer than the 3" in result.output
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "0"])
    assert result.exit_code == 2 and "-k is 0: ask for at least 1 text (the pool has 3 usable" in result.output
    assert not (tiny_run / "suggestions.csv").exists()
    (tmp_path / "header_only.csv").write_text("text\n")
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(tmp_path / "header_only.csv")])
    assert result.exit_code == 2 and "The pool has no usable text" in result.output


def test_a_suggestions_file_is_not_replaced_without_overwrite(tiny_run, tmp_path):
    """The CSV to label may hold labels typed into it: a second run refuses it before any work, unless asked."""
    pool = tmp_path / "pool.txt"
    pool.write_text("good film\nbad film\na fine plot\nslow and dull\n")
    out = tmp_path / "to_label.csv"
    out.write_text("text,label\ngood film,positive\n")
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "2", "--output", str(out)])
    assert result.exit_code == 2 and "to_label.csv exists" in result.output and "--overwrite" in result.output
    assert out.read_text() == "text,label\ngood film,positive\n"
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "2", "--output", str(out),
                                      "--overwrite", "--labelled", "none"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(out.open()))) == 2


def test_typiclust_covers_clusters_no_label_covers_yet():
    from textxfer.tools.suggest import choose

    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 10
    pool = np.concatenate([c + rng.normal(0, 0.1, (30, 8)) for c in centres])
    probs = np.full((len(pool), 2), 0.5)
    order, score = choose(probs, pool, 3, "typiclust", seed=0, labelled=centres[:1] + 0.01)
    groups = {int(i) // 30 for i in order}
    assert len(order) == 3 and len(set(order.tolist())) == 3
    assert groups == {1, 2, 3}  # one per cluster, none from the one a label already covers
    assert score.shape == (len(pool),) and (score > 0).all()


def test_typiclust_margin_takes_the_uncertain_text_inside_a_cluster():
    from textxfer.tools.suggest import choose

    rng = np.random.default_rng(1)
    pool = np.concatenate([np.eye(4)[0] * 10 + rng.normal(0, 0.1, (20, 4)),
                           np.eye(4)[1] * 10 + rng.normal(0, 0.1, (20, 4))])
    probs = np.tile([0.99, 0.01], (len(pool), 1))
    probs[7] = probs[33] = [0.5, 0.5]
    order, _ = choose(probs, pool, 2, "typiclust-margin", seed=0)
    assert sorted(order.tolist()) == [7, 33]


def _train_texts(run) -> list[str]:
    from textxfer.tools.run_labelled import from_run

    known = from_run(run)
    assert known is not None and "validation" in known.keys
    return known.texts


def test_the_runs_labelled_texts_leave_the_pool(tiny_run, tmp_path):
    train = _train_texts(tiny_run)
    fresh = ["good film here", "bad plot there", "goal goal ball", "a very fine actor", "the sad movie was"]
    pool = tmp_path / "pool.csv"
    pool.write_text("text\n" + "\n".join(train[:6] + fresh) + "\n")
    for labelled, offered in (("run", fresh), ("none", train[:6] + fresh)):
        out = tmp_path / f"next-{labelled}.csv"
        result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", str(len(offered)),
                                          "--output", str(out), "--labelled", labelled, "--strategy", "typiclust-margin"])
        assert result.exit_code == 0, result.output
        with open(out, encoding="utf-8") as f:
            assert sorted(r["text"] for r in csv.DictReader(f)) == sorted(offered)
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", str(len(fresh) + 1)])
    assert result.exit_code == 2 and f"{len(fresh)} usable text(s)" in result.output


def test_a_labelled_file_leaves_the_pool_and_counts_for_coverage(tiny_run, tmp_path, monkeypatch):
    import textxfer.tools.suggest as suggest_module

    pool = tmp_path / "pool.txt"
    pool.write_text("good film here\nbad plot there\ngoal goal ball\na very fine actor\n")
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\ngoal goal ball,sport\nthe best film,pos\n")
    seen = {}
    real = suggest_module.choose

    def spy(*args, **kwargs):
        seen["labelled"] = kwargs.get("labelled")
        return real(*args, **kwargs)

    monkeypatch.setattr(suggest_module, "choose", spy)
    out = tmp_path / "next.csv"
    result = CliRunner().invoke(cli, ["suggest", str(tiny_run), "--pool", str(pool), "-k", "3", "--output", str(out),
                                      "--labelled", str(labelled), "--strategy", "typiclust"])
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8") as f:
        assert "goal goal ball" not in {r["text"] for r in csv.DictReader(f)}
    assert seen["labelled"].shape[0] == 2  # both labelled texts embedded for coverage


def test_a_run_whose_data_moved_warns_and_goes_on(tiny_run, tmp_path, caplog):
    import shutil

    import yaml

    from textxfer.tools.run_labelled import from_run

    moved = tmp_path / "moved-run"
    shutil.copytree(tiny_run, moved)
    recipe = yaml.safe_load((moved / "recipe.yaml").read_text())
    recipe["data"]["train"] = str(tmp_path / "gone.csv")
    (moved / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert from_run(moved) is None
    assert "could not be read again" in caplog.text and "--labelled FILE" in caplog.text
