"""Run artifacts and report.html, built from synthetic run directories that follow the RUN_DIR contract.

Precision: the scores checked here are float64 arithmetic on given predictions; no model runs, so neither precision
enters."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textxfer.core.errors import UserError
from textxfer.outputs import plots, report, report_files, run_reading, run_scores, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SENTIMENT = ["negative", "neutral", "positive"]
EMOTIONS = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
            "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
            "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
            "remorse", "sadness", "surprise", "neutral"]
_WORDS = ["card", "payment", "wrong", "exchange", "rate", "pending", "cash", "withdrawal", "top_up", "transfer",
          "declined", "verify", "identity", "fee", "charged", "refund", "not", "received", "balance", "updated"]


def intent_names(n: int, seed: int = 0) -> list[str]:
    """banking77-like names: snake_case, 2 to 7 words, some 45+ characters long."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    while len(names) < n:
        name = "_".join(rng.choice(_WORDS, size=int(rng.integers(2, 8)), replace=False))
        if name not in names:
            names.append(name)
    return names


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def make_run(root: Path, labels: list[str], multi: bool = False, n_val: int = 60, n_test: int = 90,
             seed: int = 0, per_class_in_metrics: bool = True, with_eval: bool = True) -> Path:
    """Write a run directory as `textxfer train` does: run.json, recipe.yaml, history, metrics, predictions."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "model").mkdir()
    n = len(labels)
    (root / "recipe.yaml").write_text(
        "name: synthetic\nmodel:\n  name: tiny-bert\ntraining:\n  epochs: 3\n  learning_rate: 5.0e-05\n"
        f"data:\n  multi_label: {str(multi).lower()}\n", encoding="utf-8")
    steps_per_epoch = 100
    train = []
    for step in range(10, 3 * steps_per_epoch + 1, 10):
        loss = float(np.log(n) * np.exp(-step / 80) + 0.15 + abs(rng.normal(0, 0.12)))
        train.append({"step": step, "epoch": step / steps_per_epoch, "loss": loss, "learning_rate": 5e-5})
    evals = []
    for epoch, (loss, acc) in enumerate([(0.9, 0.71), (0.55, 0.83), (0.6, 0.81)], 1):
        evals.append({"step": epoch * steps_per_epoch, "epoch": float(epoch), "split": "validation",
                      "loss": loss, "accuracy": acc, "macro_f1": acc - 0.05})
    (root / "history.json").write_text(json.dumps({"train": train, "eval": evals if with_eval else []}))
    run = {
        "textxfer_version": "0.1.0", "command": "textxfer train recipes/x.yaml --token hf_" + "a" * 30,
        "started_at": "2025-01-01T10:00:00", "finished_at": "2025-01-01T10:12:03", "train_seconds": 723.4,
        "finished": with_eval, "model_name": "tiny-bert", "task": "text",
        "strategy": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "trainable_params": 12_345, "total_params": 4_500_000, "frozen": ["embeddings", "layer.0"],
        "labels": labels, "multi_label": multi, "num_processes": 1,
        "hardware": {"device": "cpu", "cpu": "x86_64 (2 cores)", "torch_threads": 2, "gpu": None},
        "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
        "data": {"train": {"rows": 300, "source": "data/train.csv", "fingerprint": "abc123"}},
    }
    (root / "run.json").write_text(json.dumps(run))
    if not with_eval:
        return root
    (root / "predictions").mkdir()
    for split, count in (("validation", n_val), ("test", n_test)):
        rows = []
        for i in range(count):
            if multi:
                true = sorted(set(rng.choice(n, size=int(rng.integers(1, 3)), replace=False).tolist()))
                probs = rng.uniform(0, 0.51, size=n)
                for t in true:
                    probs[t] = rng.uniform(0.3, 1.0)
                pred = [j for j in range(n) if probs[j] >= 0.5]
                rows.append({"text": f"{split} comment {i} <b>&amp; \"quoted\"</b>",
                             "label": [labels[t] for t in true], "pred": [labels[p] for p in pred],
                             "confidence": float(probs.max()), "probs": probs.tolist()})
            else:
                true = i % n
                logits = rng.normal(0, 1, size=n)
                logits[true] += 2.5
                # a few near-duplicate classes are confused with their neighbour
                if n > 10 and true % 7 == 0:
                    logits[(true + 1) % n] += 3.0
                probs = _softmax(logits)
                pred = int(probs.argmax())
                rows.append({"text": f"{split} example {i} <script>alert(1)</script> & more",
                             "label": labels[true], "pred": labels[pred], "confidence": float(probs.max()),
                             "probs": probs.tolist()})
        with (root / "predictions" / f"{split}.jsonl").open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    examples = {s: run_reading.load_run(root).examples[s] for s in ("validation", "test")}
    per_class = {s: run_scores.per_class_from_predictions(examples[s], labels) for s in examples}
    metrics = {
        "best_metric": "accuracy",
        "best": {"accuracy": 0.83, "macro_f1": 0.78, "loss": 0.55, "epoch": 2.0, "step": 200},
        "validation": {"accuracy": 0.83, "macro_f1": 0.78, "loss": 0.55},
        "test": {"accuracy": 0.8, "macro_f1": 0.76, "loss": 0.6},
        "num_processes": 1,
    }
    if per_class_in_metrics:
        metrics["per_class"] = per_class
    if multi:
        metrics["thresholds"] = [round(float(t), 2) for t in rng.uniform(0.2, 0.7, size=n)]
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {
        "three": make_run(base / "three", SENTIMENT),
        "many": make_run(base / "many", intent_names(77), n_val=77 * 3, n_test=77 * 6, seed=1,
                         per_class_in_metrics=False),
        "multi": make_run(base / "multi", EMOTIONS, multi=True, n_val=150, n_test=200, seed=2),
    }
    for path in out.values():
        report.build_report(path)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _confusion_csv(path: Path) -> tuple[str, list[str], np.ndarray]:
    with path.open(newline="") as fh:
        table = list(csv.reader(fh))
    return table[0][0], table[0][1:], np.array([[int(v) for v in row[1:]] for row in table[1:]])


@pytest.mark.parametrize("name", ["three", "many"])
def test_single_label_files_are_valid(runs, name):
    root = runs[name]
    for plot in ("loss", "metrics", "confusion"):
        assert _is_png(root / "plots" / f"{plot}.png"), plot
    assert not (root / "plots" / "per_label_f1.png").exists()
    with (root / "errors.csv").open(newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert list(errors[0]) == ["split", "text", "label", "pred", "confidence"]
    expected = sum(r["label"] != r["pred"] for s in ("validation", "test")
                   for r in _rows(root / "predictions" / f"{s}.jsonl"))
    assert len(errors) == expected > 0
    assert all(e["label"] != e["pred"] for e in errors)
    conf = [float(e["confidence"]) for e in errors]
    assert conf == sorted(conf, reverse=True)
    with (root / "per_class.csv").open(newline="") as fh:
        per_class = list(csv.DictReader(fh))
    assert list(per_class[0]) == ["split", "label", "precision", "recall", "f1", "support"]
    labels = json.loads((root / "run.json").read_text())["labels"]
    assert [(r["split"], r["label"]) for r in per_class] == [(s, lab) for s in ("validation", "test") for lab in labels]


@pytest.mark.parametrize("name", ["three", "many"])
def test_confusion_numbers_match_test_predictions(runs, name):
    root = runs[name]
    labels = json.loads((root / "run.json").read_text())["labels"]
    expected = np.zeros((len(labels), len(labels)), dtype=int)
    for row in _rows(root / "predictions" / "test.jsonl"):
        expected[labels.index(row["label"]), labels.index(row["pred"])] += 1
    corner, header, counts = _confusion_csv(root / "plots" / "confusion.csv")
    assert corner.startswith("test")
    assert header == labels
    assert np.array_equal(counts, expected)
    assert counts.sum() == len(_rows(root / "predictions" / "test.jsonl"))


def test_the_plotted_matrix_is_the_predictions_matrix(tmp_path, monkeypatch):
    root = make_run(tmp_path / "run", SENTIMENT, n_test=45)
    drawn = {}

    def record(labels, counts, path, title):
        drawn.update(labels=list(labels), counts=counts.copy(), title=title)

    monkeypatch.setattr(plots, "plot_confusion", record)
    report_files.write_run_artifacts(root)
    expected = np.zeros((3, 3), dtype=int)
    for row in _rows(root / "predictions" / "test.jsonl"):
        expected[SENTIMENT.index(row["label"]), SENTIMENT.index(row["pred"])] += 1
    assert drawn["labels"] == SENTIMENT and np.array_equal(drawn["counts"], expected)
    assert "test split (45 examples)" in drawn["title"]


def test_per_class_computed_from_predictions_is_right():
    rows = [run_reading.Example("test", "a", "x", "x", 0.9), run_reading.Example("test", "b", "x", "y", 0.8),
            run_reading.Example("test", "c", "y", "y", 0.7), run_reading.Example("test", "d", "z", "y", 0.6)]
    scores = run_scores.per_class_from_predictions(rows, ["x", "y", "z"])
    assert scores["x"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert scores["y"]["precision"] == pytest.approx(1 / 3) and scores["y"]["recall"] == 1.0
    assert scores["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_per_class_csv_uses_metrics_json_values(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT)
    metrics = json.loads((root / "metrics.json").read_text())
    metrics["per_class"]["test"]["neutral"] = {"precision": 0.125, "recall": 0.25, "f1": 0.5, "support": 7}
    (root / "metrics.json").write_text(json.dumps(metrics))
    report_files.write_run_artifacts(root)
    with (root / "per_class.csv").open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["split"] == "test" and r["label"] == "neutral")
    assert (float(row["precision"]), float(row["f1"]), row["support"]) == (0.125, 0.5, "7")


def test_confusion_uses_validation_when_there_is_no_test_split(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT)
    (root / "predictions" / "test.jsonl").unlink()
    report_files.write_run_artifacts(root)
    corner, _, counts = _confusion_csv(root / "plots" / "confusion.csv")
    assert corner.startswith("validation")
    assert counts.sum() == len(_rows(root / "predictions" / "validation.jsonl"))


def test_multi_label_files(runs):
    root = runs["multi"]
    for plot in ("loss", "metrics", "confusion", "per_label_f1"):
        assert _is_png(root / "plots" / f"{plot}.png"), plot
    test_rows = _rows(root / "predictions" / "test.jsonl")
    expected = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=int)
    for row in test_rows:
        for t in row["label"]:
            for p in row["pred"]:
                if p == t or p not in row["label"]:  # a co-occurring true label is no confusion
                    expected[EMOTIONS.index(t), EMOTIONS.index(p)] += 1
    _, header, counts = _confusion_csv(root / "plots" / "confusion.csv")
    assert header == EMOTIONS and np.array_equal(counts, expected)
    # the diagonal over the row's support is the recall that metrics.json reports per label
    recall = json.loads((root / "metrics.json").read_text())["per_class"]["test"]
    support = np.array([sum(lab in row["label"] for row in test_rows) for lab in EMOTIONS])
    assert np.allclose(np.diag(counts) / support, [recall[lab]["recall"] for lab in EMOTIONS])
    with (root / "errors.csv").open(newline="") as fh:
        errors = list(csv.DictReader(fh))
    wrong = [r for s in ("validation", "test") for r in _rows(root / "predictions" / f"{s}.jsonl")
             if set(r["label"]) != set(r["pred"])]
    assert len(errors) == len(wrong) > 0
    assert all(set(e["label"].split("|")) != set(filter(None, e["pred"].split("|"))) for e in errors)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        self.imgs += tag == "img"
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "poster", "srcset")]


@pytest.mark.parametrize("name", ["three", "many", "multi"])
def test_report_is_self_contained_and_escaped(runs, name):
    page = (runs[name] / "report.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    assert parser.refs and all(r.startswith(("data:image/png;base64,", "#")) for r in parser.refs)
    assert parser.imgs == (4 if name == "multi" else 3)
    assert "http://" not in page and "https://" not in page and "url(" not in page and "@import" not in page
    assert "<script" not in page.lower()  # the example texts hold <script>; they must arrive escaped
    assert "&lt;script&gt;" in page or "&lt;b&gt;" in page
    assert "hf_" + "a" * 30 not in page  # a token on the command line is masked
    for text in ("Top mistakes", "Per-class results", "Recipe (resolved)", "Timing and hardware", "lora",
                 "12,345", "best (validation)"):
        assert text in page, text


def test_not_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a textxfer run directory"):
        report.write_report(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        report_files.write_run_artifacts(tmp_path / "nope")
    result = CliRunner().invoke(report.report_command, [str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert not (tmp_path / "report.html").exists()


def test_run_that_died_before_its_first_evaluation(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT, with_eval=False)
    written = report_files.write_run_artifacts(root)
    assert written == [root / "plots" / "loss.png"] and _is_png(written[0])
    result = report.build_report(root)
    joined = " ".join(result.warnings)
    assert "metrics.json is missing" in joined and "first evaluation" in joined and "did not finish" in joined
    page = result.path.read_text()
    assert "What is missing" in page and "metrics.json is missing" in page and page.count("<img") == 1
    lines = summary.summary_lines(root)
    assert lines[0].startswith("No evaluation finished")


def test_summary_of_a_finished_run_without_validation(tmp_path):
    """Few-shot recipes keep no validation split: the summary says the last epoch was kept, not that nothing ran."""
    root = make_run(tmp_path / "run", SENTIMENT)
    metrics = json.loads((root / "metrics.json").read_text())
    for key in ("best", "validation"):
        metrics.pop(key)
    (root / "metrics.json").write_text(json.dumps(metrics))
    lines = summary.summary_lines(root)
    assert lines[0] == "No validation split, so the saved model is the last epoch's."
    assert lines[1].startswith("Test: accuracy 0.8000")


def test_a_failing_plot_does_not_raise(tmp_path, monkeypatch, caplog):
    root = make_run(tmp_path / "run", SENTIMENT)

    def boom(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "plot_confusion", boom)
    written = report_files.write_run_artifacts(root)
    assert {p.name for p in written} == {"loss.png", "metrics.png", "errors.csv", "per_class.csv"}
    assert "no fonts" in caplog.text
    result = report.build_report(root)
    assert any("plots/confusion.png could not be written" in w for w in result.warnings)


def test_broken_files_are_named_not_raised(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT)
    (root / "history.json").write_text("{not json")
    with (root / "predictions" / "test.jsonl").open("a") as fh:
        fh.write("garbage\n")
    result = report.build_report(root)
    assert any("history.json could not be read" in w for w in result.warnings)
    assert any("1 line(s)" in w for w in result.warnings)
    assert _is_png(root / "plots" / "confusion.png") and not (root / "plots" / "loss.png").exists()


def test_unreadable_records_are_not_taken_for_a_run_that_stopped_early(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT)
    (root / "history.json").write_text("{not json")
    (root / "metrics.json").write_text("{")
    joined = " ".join(report.build_report(root).warnings)
    assert "No evaluation can be shown: metrics.json and history.json could not be read" in joined
    assert "first evaluation" not in joined and "textxfer evaluate" in joined
    assert summary.summary_lines(root)[0].startswith("metrics.json could not be read")


def test_history_sections_of_another_shape_are_named_not_raised(tmp_path):
    root = make_run(tmp_path / "run", SENTIMENT)
    (root / "history.json").write_text(json.dumps({"eval": 5, "train": {"a": 1}, "self_training": [1]}))
    joined = " ".join(report.build_report(root).warnings)
    assert "history.json: `eval` is a number where a run writes a list; it is ignored" in joined
    assert "`train` is a mapping where a run writes a list" in joined
    assert "`self_training` is a list where a run writes a mapping" in joined


def test_summary_lines(runs):
    root = runs["three"]
    lines = summary.summary_lines(root)
    assert lines[0] == "Best accuracy: 0.8300 (epoch 2, step 200)"
    assert lines[1].startswith("Test: accuracy 0.8000, macro_f1 0.7600, loss 0.6000")
    assert "12m 03s on cpu" in lines[2]
    assert f"Model: {root / 'model'}" in lines and f"Report: {root / 'report.html'}" in lines
    assert lines[-1] == f"Predict: textxfer predict {root} --input FILE"


def test_cli_report_and_open(runs, monkeypatch):
    opened = []
    monkeypatch.setattr(report.webbrowser, "open", opened.append)
    result = CliRunner().invoke(report.report_command, [str(runs["three"]), "--open"])
    assert result.exit_code == 0, result.output
    assert f"Wrote {runs['three'] / 'report.html'}" in result.output
    assert opened == [(runs["three"] / "report.html").resolve().as_uri()]


def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                                shutil.which("chromium-browser") or "") if p and Path(p).is_file()), None)
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); report.html was not rendered")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           "--hide-scrollbars", (runs["multi"] / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.is_file(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    from PIL import Image  # pillow comes with matplotlib

    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    # a blank (or error) page is one or two colours; the report has text, cards and plots in many
    assert len(colours) > 200, len(colours)
    # and most of the page is not background: the top of the report is rendered content, not a white sheet
    top = max(colours)[0] / (1200 * 2000)
    assert top < 0.9, f"{top:.0%} of the screenshot is a single colour"
