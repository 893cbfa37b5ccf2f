"""Progress of long work (textxfer.core.progress): a bar on a terminal, plain lines every few percent in a log, only
from the main process; and the lines a tiny run writes into its train.log (cache pass, contrastive stage, training,
evaluation)."""

from __future__ import annotations

import io
import logging
import re

import pytest
from conftest import tiny_recipe, write_tiny_dataset

from textxfer.core import progress as progress_module
from textxfer.core.progress import ProgressReport, format_duration


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves: no assertion on wall-clock time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_items(report: ProgressReport, clock: Clock, n: int, seconds_each: float) -> None:
    for _ in range(n):
        clock.now += seconds_each
        report.update(1)
    report.close()


def test_a_terminal_gets_a_bar_with_rate_and_time_left_and_no_lines():
    terminal, said = FakeTerminal(), []
    report = ProgressReport("cache pass", 200, "examples", stream=terminal, say=said.append, show=True, leave=True)
    for _ in range(200):
        report.update(1)
    report.close()
    bar = terminal.getvalue()
    assert "cache pass" in bar and "examples/s" in bar and "<" in bar  # tqdm: [elapsed<left, rate]
    assert re.search(r"200/200 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+k?examples/s\]", bar) and said == []


def test_a_log_gets_a_line_every_five_percent_with_rate_and_time_left():
    clock, said = Clock(), []
    report = ProgressReport("evaluate test", 1000, "examples", stream=io.StringIO(), say=said.append, show=True,
                            clock=clock)
    run_items(report, clock, 1000, seconds_each=0.5)  # 500 s in all: 25 s per 5%
    assert len(said) == 19  # 5%, 10% ... 95%: not one per item; the step itself says when it is done
    assert said[0] == "evaluate test: 5% (50 of 1,000 examples), 2.0 examples/s, 7m55s left"
    assert said[-1] == "evaluate test: 95% (950 of 1,000 examples), 2.0 examples/s, 25s left"


def test_lines_never_come_more_often_than_every_few_seconds():
    clock, said, at = Clock(), [], []
    report = ProgressReport("train", 1000, "steps", stream=io.StringIO(), say=lambda s: (said.append(s),
                            at.append(clock.now)), show=True, clock=clock)
    run_items(report, clock, 1000, seconds_each=0.02)  # 20 s in all: 5% every second
    gaps = [b - a for a, b in zip([0.0] + at, at, strict=False)]
    assert 2 <= len(said) <= 20 // progress_module.LOG_MIN_SECONDS
    assert min(gaps) >= progress_module.LOG_MIN_SECONDS


def test_short_work_stays_silent_in_a_log():
    clock, said = Clock(), []
    report = ProgressReport("frozen-prefix cache", 100, "examples", stream=io.StringIO(), say=said.append,
                            show=True, clock=clock)
    run_items(report, clock, 100, seconds_each=0.01)
    assert said == []


def test_an_unknown_total_gives_a_line_a_minute_and_notes_ride_along():
    clock, said = Clock(), []
    report = ProgressReport("predict", None, "rows", stream=io.StringIO(), say=said.append, show=True, clock=clock)
    report.note(loss="0.1234")
    run_items(report, clock, 300, seconds_each=1.0)
    assert len(said) == 5 and said[0] == "predict: 60 rows, 1.0 rows/s, loss 0.1234"


def test_a_resumed_pass_counts_from_where_it_stood():
    clock, said = Clock(), []
    report = ProgressReport("predict", 100, "rows", initial=42, approximate=True, stream=io.StringIO(),
                            say=said.append, show=True, clock=clock)
    run_items(report, clock, 58, seconds_each=10.0)
    assert said[0] == "predict: 45% (45 of ~100 rows), 0.1 rows/s, 9m10s left"  # 3 new rows in 30 s


def test_only_process_zero_shows_progress(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    terminal, said = FakeTerminal(), []
    clock = Clock()
    report = ProgressReport("train", 100, "steps", stream=terminal, say=said.append, clock=clock)
    run_items(report, clock, 100, seconds_each=10.0)
    log_said = []
    report = ProgressReport("train", 100, "steps", stream=io.StringIO(), say=log_said.append, clock=clock)
    run_items(report, clock, 100, seconds_each=10.0)
    assert terminal.getvalue() == "" and said == [] and log_said == []
    monkeypatch.setenv("RANK", "0")
    report = ProgressReport("train", 100, "steps", stream=io.StringIO(), say=log_said.append, clock=clock)
    run_items(report, clock, 100, seconds_each=10.0)
    assert len(log_said) == 19


def test_with_a_bar_on_the_terminal_the_log_file_still_gets_the_lines(tmp_path):
    """The `textxfer` logger's terminal handler is skipped while the bar shows; its file handler (train.log) gets
    the lines."""
    log = logging.getLogger("textxfer")
    saved = log.handlers[:], log.level, log.propagate
    terminal = FakeTerminal()
    log.handlers = [logging.StreamHandler(terminal), logging.FileHandler(tmp_path / "train.log")]
    log.setLevel(logging.INFO)
    try:
        clock = Clock()
        report = ProgressReport("train", 100, "steps", stream=terminal, show=True, clock=clock)
        run_items(report, clock, 100, seconds_each=10.0)
    finally:
        for h in log.handlers:
            h.close()
        log.handlers, log.level, log.propagate = saved[0], saved[1], saved[2]
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 19 and lines[0].startswith("train: 5% (5 of 100 steps)")
    assert "train: 5%" not in terminal.getvalue() and "steps/s" in terminal.getvalue()


@pytest.mark.parametrize(("seconds", "text"), [(7, "7s"), (187, "3m07s"), (7500, "2h05m"),
                                               (float("inf"), "unknown time")])
def test_time_left_reads_as_a_duration(seconds, text):
    assert format_duration(seconds) == text


PERCENT_LINE = r": \d+% \([\d,]+ of [\d,]+ {unit}\), [\d.,]+ {unit}/s, \w+ left"


@pytest.fixture
def every_line(monkeypatch):
    """No minimum gap between lines: the steps of a tiny run take under a second."""
    monkeypatch.setattr(progress_module, "LOG_MIN_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS_UNKNOWN", 0.0)


def test_cache_pass_training_and_evaluation_write_their_lines_into_train_log(tiny_models, tmp_path, every_line):
    from textxfer.tools.train import train

    data = write_tiny_dataset(tmp_path / "data", n=160)  # 80 validation examples: two evaluation batches of 64
    train(tiny_recipe(tiny_models["bert"], data, tmp_path / "run", strategy__name="head", training__epochs=1,
                      training__batch_size=16, training__checkpoint_every=None, training__log_every=2))
    log = (tmp_path / "run" / "train.log").read_text()
    for step, unit in (("frozen-prefix cache", "examples"), ("train", "steps"), ("evaluate validation", "examples")):
        assert re.search(re.escape(step) + PERCENT_LINE.format(unit=unit), log), (step, log)
    assert re.search(r"train: \d+% .*, loss \d\.\d{4}", log)


def test_the_contrastive_stage_writes_its_lines_into_train_log(tiny_models, tiny_data, tmp_path, every_line):
    from textxfer.tools.train import train

    train(tiny_recipe(tiny_models["bert"], tiny_data, tmp_path / "run", model__pooling="mean",
                      strategy__name="freeze", strategy__freeze_layers=1, training__epochs=1,
                      training__checkpoint_every=None, training__log_every=2,
                      training__contrastive={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}))
    log = (tmp_path / "run" / "train.log").read_text()
    assert re.search("contrastive stage" + PERCENT_LINE.format(unit="steps"), log), log
    assert re.search(r"contrastive stage: \d+% .*, loss \d\.\d{4}", log)
