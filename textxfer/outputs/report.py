"""`textxfer report RUN_DIR`: (re)write a run's plots, CSV files and report.html from its files.

Everything here reads only the files of the run directory contract (run.json, recipe.yaml, metrics.json,
history.json, predictions/*.jsonl), so a report can be (re)written for any run, on any machine, long after
training, and a failure here can never touch the saved model. Missing pieces are skipped and named.
The work is split: run_reading (the files), run_scores (numbers from predictions), report_files (plots and
CSV files), report_html (the page), summary (the lines `train` prints last).
"""

from __future__ import annotations

import logging
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import click

from textxfer.core.errors import UserError
from textxfer.outputs.report_files import write_artifacts
from textxfer.outputs.report_html import missing_warnings, render_page
from textxfer.outputs.run_reading import load_run
from textxfer.outputs.run_scores import per_class

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What `build_report` did: the page, what is missing or failed (also shown in the page), files written."""

    path: Path
    warnings: list[str]
    written: list[Path]


def build_report(run_dir: str | Path) -> Report:
    """(Re)write the run's artifacts and report.html; the warnings say what is missing or failed."""
    run = load_run(run_dir)
    written, notes = write_artifacts(run)
    warnings = missing_warnings(run) + notes
    page = render_page(run, warnings, per_class(run))
    path = run.root / "report.html"
    tmp = path.with_suffix(".html.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"Cannot write {path} ({exc.strerror or exc}). Make the run directory writable, "
                        "or copy it somewhere writable and run `textxfer report` on the copy.") from exc
    for w in warnings:  # the caller shows them (the CLI prints them); keep them in a log that asks for detail
        log.info("report: %s", w)
    return Report(path, warnings, [*written, path])


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html, one self-contained page (images inlined, no URL); returns its path."""
    return build_report(run_dir).path


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--open", "open_browser", is_flag=True, help="Open report.html in the default web browser.")
def report_command(run_dir: Path, open_browser: bool) -> None:
    """Write RUN_DIR/report.html: plots, metrics, per-class table and top mistakes of a training run."""
    report = build_report(run_dir)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"Wrote {report.path}")
    if open_browser:
        webbrowser.open(report.path.resolve().as_uri())
