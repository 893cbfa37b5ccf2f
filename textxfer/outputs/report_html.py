"""report.html: one self-contained page (CSS and images inlined) with a section per part of a run.

Sections whose files are missing are left out and named under "What is missing"; any Hugging Face token that
slipped into a recorded value is masked before it reaches the page.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from textxfer.outputs import plots
from textxfer.outputs.report_format import (
    best_checkpoint_position,
    format_params,
    format_seconds,
    format_value,
    headline_metrics,
    metric_items,
)
from textxfer.outputs.report_self_training import self_training_section
from textxfer.outputs.run_reading import RunFiles
from textxfer.outputs.run_scores import confusion_counts, mistakes, thresholds

TOP_MISTAKES = 50
TOP_PAIRS = 20
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 12px;border-bottom:1px solid #e3e6eb;padding-bottom:6px}
section{background:#fff;border:1px solid #e3e6eb;border-radius:8px;padding:16px 20px;margin:16px 0}
.sub{color:#5b6475;margin:0}
.warn{background:#fff7e6;border-color:#f0c36d}.warn li{margin:4px 0}
table{border-collapse:collapse;font-size:.92em}
th,td{border-bottom:1px solid #eceef2;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.kv th{background:none;font-weight:600;white-space:nowrap;position:static}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e3e6eb;border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:1.6em;font-weight:600}.card .k{color:#5b6475;font-size:.85em}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.zoomable{overflow:auto;max-height:1500px;border:1px solid #eceef2}
.zoom{margin:0 6px 0 0}.zoom:checked+label+.zoomable img{max-width:none}
pre{background:#f4f5f7;padding:12px;border-radius:6px;overflow:auto;font-size:.85em}
td.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
nav a{margin-right:12px;color:#2160c4;text-decoration:none}
"""


def _e(value) -> str:
    return html.escape(_HF_TOKEN.sub("hf_***", str(value)), quote=True)


def _kv_table(items: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _plain(value) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return format_value(value)


def _img(path: Path, alt: str, zoom: bool | None = None) -> str:
    """The PNG inlined as a data URI; with zoom set, a CSS-only checkbox toggles fit-to-width / full size."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
    if zoom is None:
        return img
    key = re.sub(r"\W", "-", path.stem)
    return (f'<input type="checkbox" class="zoom" id="zoom-{key}"{" checked" if zoom else ""}>'
            f'<label for="zoom-{key}">full size (scroll inside the frame)</label><div class="zoomable">{img}</div>')


def _section(anchor: str, title: str, body: str, extra_class: str = "") -> str:
    cls = f' class="{extra_class}"' if extra_class else ""
    return f'<section id="{anchor}"{cls}><h2>{_e(title)}</h2>{body}</section>'


def missing_warnings(run: RunFiles) -> list[str]:
    out = list(run.problems)
    names = {
        "run.json": "model, strategy, parameters, timing and hardware are unknown",
        "recipe.yaml": "the recipe cannot be shown",
        "history.json": "no loss or metric curves",
        "metrics.json": "no metrics table",
    }
    present = {"run.json": run.run, "recipe.yaml": run.recipe_text, "history.json": run.history,
               "metrics.json": run.metrics}
    for name, why in names.items():
        if present[name] is None and not any(p.startswith(name) for p in run.problems):
            out.append(f"{name} is missing: {why}.")
    unreadable = [n for n in ("metrics.json", "history.json") if run.unreadable(n)]
    if not run.eval_records and run.metrics is None and unreadable:  # damaged records, not a run that stopped early
        out.append(f"No evaluation can be shown: {' and '.join(unreadable)} could not be read (above). `textxfer "
                   f"evaluate {run.root} --data FILE` scores the saved model again.")
    elif not run.eval_records and run.metrics is None:
        out.append("The run has no evaluation: it stopped before its first evaluation (or is still running). "
                   "This page shows what exists; train.log says why it stopped.")
    if not run.examples:
        out.append("predictions/validation.jsonl and predictions/test.jsonl are missing: no confusion matrix "
                   "and no list of mistakes.")
    if run.run is not None and run.run.get("finished") is False:
        out.append("run.json says the run did not finish (finished: false).")
    if not (run.root / "model").is_dir():
        out.append(f"model/ is missing from {run.root}: no model was saved.")
    return out


def _overview(run: RunFiles) -> str:
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    cards = []
    if best_metric and plots.is_number(best.get(best_metric)):
        cards.append((f"best validation {best_metric}", f"{best[best_metric]:.4f}", best_checkpoint_position(best).strip(" ()")))
    for k, v in headline_metrics(metrics.get("test"), best_metric, limit=3):
        cards.append((f"test {k}", f"{v:.4f}", ""))
    info = run.run or {}
    if plots.is_number(info.get("train_seconds")):
        cards.append(("training time", format_seconds(info["train_seconds"]), ""))
    if plots.is_number(info.get("trainable_params")) and plots.is_number(info.get("total_params")) and info["total_params"]:
        share = 100 * info["trainable_params"] / info["total_params"]
        cards.append(("trainable parameters", format_params(info["trainable_params"]),
                      f"{share:.2f}% of {format_params(info['total_params'])}"))
    if not cards:
        return ""
    html_cards = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="k">{_e(note)}</div></div>' for k, v, note in cards)
    return f'<section id="overview"><div class="cards">{html_cards}</div></section>'


def _metrics_table(run: RunFiles) -> str:
    metrics = run.metrics or {}
    best_metric = metrics.get("best_metric")
    columns = [("best (validation)", metrics.get("best")), ("validation (final)", metrics.get("validation")),
               ("test", metrics.get("test"))]
    columns = [(name, scores) for name, scores in columns if isinstance(scores, dict) and scores]
    if not columns:
        return ""
    keys: list[str] = []
    for _, scores in columns:
        for k, _v in metric_items(scores, best_metric):
            if k not in keys:
                keys.append(k)
    head = "".join(f'<th class="n">{_e(name)}</th>' for name, _ in columns)
    rows = []
    for k in keys:
        cells = "".join(
            f'<td class="n">{_e(f"{s[k]:.4f}") if plots.is_number(s.get(k)) else "—"}</td>' for _, s in columns)
        mark = " (selects the best checkpoint)" if k == best_metric else ""
        rows.append(f"<tr><th>{_e(k + mark)}</th>{cells}</tr>")
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    note = f'<p class="sub">Best checkpoint{_e(best_checkpoint_position(best))}.</p>' if best_checkpoint_position(best) else ""
    return _section("metrics", "Metrics", f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>{note}")


def _model_section(run: RunFiles) -> str:
    info = run.run
    if not info:
        return ""
    items = [("model", info.get("model_name")), ("task", info.get("task")),
             ("labels", f"{len(run.labels)}" + (" (multi-label)" if run.multi_label else ""))]
    if plots.is_number(info.get("trainable_params")):
        total = info.get("total_params")
        share = f" ({100 * info['trainable_params'] / total:.2f}% of {format_value(total)})" if plots.is_number(total) and total else ""
        items.append(("trainable parameters", f"{format_value(info['trainable_params'])}{share}"))
    if info.get("frozen"):
        items.append(("frozen", ", ".join(map(str, info["frozen"]))))
    strategy = info.get("strategy")
    body = _kv_table([(k, _plain(v)) for k, v in items if v is not None])
    if isinstance(strategy, dict) and strategy:
        body += "<h3>Strategy</h3>" + _kv_table([(k, _plain(v)) for k, v in strategy.items()])
    elif strategy:
        body += "<h3>Strategy</h3>" + _kv_table([("strategy", _plain(strategy))])
    data = info.get("data")
    if isinstance(data, dict) and data:
        rows = "".join(
            f'<tr><th>{_e(split)}</th><td class="n">{_e(format_value((d or {}).get("rows")))}</td>'
            f'<td>{_e((d or {}).get("source", ""))}</td><td>{_e((d or {}).get("fingerprint", ""))}</td></tr>'
            for split, d in data.items() if isinstance(d, dict))
        body += f"<h3>Data</h3><table><tr><th>split</th><th>rows</th><th>source</th><th>fingerprint</th></tr>{rows}</table>"
    return _section("model", "Model and transfer strategy", body)


def _timing_section(run: RunFiles) -> str:
    info = run.run
    if not info:
        return ""
    items = [("command", info.get("command")), ("started", info.get("started_at")),
             ("finished", info.get("finished_at")), ("training time", format_seconds(info.get("train_seconds"))),
             ("finished normally", info.get("finished")), ("processes", info.get("num_processes")),
             ("textxfer", info.get("textxfer_version"))]
    hardware = info.get("hardware")
    if isinstance(hardware, dict):
        items += [(k, v) for k, v in hardware.items()]
    body = _kv_table([(k, _plain(v)) for k, v in items if v is not None])
    versions = info.get("versions")
    if isinstance(versions, dict) and versions:
        body += "<details><summary>Package versions</summary>" + _kv_table(
            [(k, _plain(v)) for k, v in versions.items()]) + "</details>"
    return _section("timing", "Timing and hardware", body)


def _plots_section(run: RunFiles) -> str:
    plot_dir = run.root / "plots"
    parts = []
    for name in ("loss", "metrics"):
        if (plot_dir / f"{name}.png").is_file():
            parts.append(_img(plot_dir / f"{name}.png", f"{name} plot"))
    if (plot_dir / "per_label_f1.png").is_file():
        parts.append("<h3>Per-label F1 and thresholds</h3>" + _img(plot_dir / "per_label_f1.png", "per-label F1"))
    if (plot_dir / "confusion.png").is_file():
        # many classes: open at full size so label names are readable; the toggle shows the whole matrix
        n = len(run.labels)
        parts.append("<h3>Confusion matrix</h3>"
                     + _img(plot_dir / "confusion.png", "confusion matrix", zoom=n > 40 if n > 20 else None))
    if not parts:
        return ""
    return _section("plots", "Plots", "".join(parts))


def _pairs_section(run: RunFiles) -> str:
    split = run.primary_split
    if split is None or run.multi_label:
        return ""
    counts, support = confusion_counts(run.examples[split], run.labels)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:TOP_PAIRS]
    rows = []
    for flat in order:
        t, p = divmod(int(flat), len(run.labels))
        if off[t, p] == 0:
            break
        rows.append(f'<tr><td>{_e(run.labels[t])}</td><td>{_e(run.labels[p])}</td><td class="n">{off[t, p]}</td>'
                    f'<td class="n">{100 * off[t, p] / max(support[t], 1):.1f}%</td></tr>')
    if not rows:
        return ""
    body = (f'<p class="sub">{_e(split)} split: the true class most often predicted as another.</p>'
            "<table><tr><th>true</th><th>predicted</th><th>count</th><th>share of true class</th></tr>"
            + "".join(rows) + "</table>")
    return _section("pairs", "Most confused pairs", body)


def _per_class_section(run: RunFiles, table: dict[str, dict[str, dict]]) -> str:
    if not table:
        return ""
    primary = "test" if "test" in table else next(iter(table))
    other = next((s for s in table if s != primary), None)
    thr = thresholds(run) if run.multi_label else None
    rows_data = table[primary]
    names = [n for n in run.labels if n in rows_data] + sorted(set(rows_data) - set(run.labels))
    names.sort(key=lambda n: rows_data[n].get("f1") if plots.is_number(rows_data[n].get("f1")) else -1.0)
    head = (f"<tr><th>label</th><th class='n'>support</th><th class='n'>precision</th><th class='n'>recall</th>"
            f"<th>F1 ({_e(primary)})</th>" + (f"<th class='n'>F1 ({_e(other)})</th>" if other else "")
            + ("<th class='n'>threshold</th>" if thr else "") + "</tr>")
    rows = []
    index = {n: i for i, n in enumerate(run.labels)}

    def num(v) -> str:
        return _e(f"{v:.3f}") if plots.is_number(v) else "—"

    for name in names:
        s = rows_data[name]
        f1 = s.get("f1")
        width = 100 * f1 if plots.is_number(f1) else 0
        bar = f'style="background:linear-gradient(90deg,#cfe0f5 {width:.0f}%,transparent {width:.0f}%)"'
        cells = (f"<td>{_e(name)}</td><td class='n'>{_e(format_value(s.get('support')))}</td>"
                 f"<td class='n'>{num(s.get('precision'))}</td><td class='n'>{num(s.get('recall'))}</td>"
                 f"<td class='n' {bar}>{num(f1)}</td>")
        if other:
            cells += f"<td class='n'>{num((table[other].get(name) or {}).get('f1'))}</td>"
        if thr:
            cells += f"<td class='n'>{num(thr[index[name]]) if name in index else '—'}</td>"
        rows.append(f"<tr>{cells}</tr>")
    body = (f'<p class="sub">{_e(primary)} split, sorted by F1, worst first. Also in per_class.csv.</p>'
            f"<table>{head}{''.join(rows)}</table>")
    return _section("per-class", "Per-class results", body)


def _mistakes_section(run: RunFiles) -> str:
    if not run.examples:
        return ""
    wrong = mistakes(run)
    total = sum(len(v) for v in run.examples.values())
    if not wrong:
        return _section("mistakes", "Top mistakes", f'<p class="sub">No mistakes in {total:,} examples.</p>')
    what = "image" if run.task == "image" else "text"
    head = ("<tr><th>#</th><th>split</th><th class='n'>confidence</th><th>true</th><th>predicted</th>"
            + ("<th>missed / extra</th>" if run.multi_label else "") + f"<th>{what}</th></tr>")
    rows = []
    for i, e in enumerate(wrong[:TOP_MISTAKES], 1):
        text = " ".join(e.text.split())  # one paragraph per row; the full text is in errors.csv
        text = text if len(text) <= 400 else text[:400] + "…"
        diff = ""
        if run.multi_label:
            missed = [n for n in e.label if n not in e.pred]
            extra = [n for n in e.pred if n not in e.label]
            diff = f"<td>missed: {_e(', '.join(missed) or '—')}<br>extra: {_e(', '.join(extra) or '—')}</td>"
        shown = (lambda v: ", ".join(v) or "(none)") if run.multi_label else str
        rows.append(f"<tr><td class='n'>{i}</td><td>{_e(e.split)}</td><td class='n'>{e.confidence:.3f}</td>"
                    f"<td>{_e(shown(e.label))}</td><td>{_e(shown(e.pred))}</td>{diff}"
                    f"<td class='text'>{_e(text)}</td></tr>")
    body = (f'<p class="sub">{len(wrong):,} wrong of {total:,} validation/test examples; the '
            f"{min(len(wrong), TOP_MISTAKES)} most confident mistakes (often label noise). All are in errors.csv.</p>"
            f"<table>{head}{''.join(rows)}</table>")
    return _section("mistakes", "Top mistakes", body)


def _recipe_section(run: RunFiles) -> str:
    if run.recipe_text is None:
        return ""
    return _section("recipe", "Recipe (resolved)", f"<pre>{_e(run.recipe_text)}</pre>")


def render_page(run: RunFiles, warnings: list[str], table: dict[str, dict[str, dict]]) -> str:
    info = run.run or {}
    title = f"textxfer run: {info.get('model_name') or run.root.name}"
    recipe_name = None
    if run.recipe_text:
        try:
            recipe = yaml.safe_load(run.recipe_text)
            recipe_name = recipe.get("name") if isinstance(recipe, dict) else None
        except yaml.YAMLError:
            warnings.append("recipe.yaml is not valid YAML; it is shown as text.")
    sub = " · ".join(str(x) for x in (recipe_name, run.root.resolve(), info.get("finished_at")) if x)
    sections = [
        _overview(run),
        _section("warnings", "What is missing", "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>",
                 "warn") if warnings else "",
        _metrics_table(run), self_training_section(run), _plots_section(run), _pairs_section(run), _per_class_section(run, table),
        _mistakes_section(run), _model_section(run), _timing_section(run), _recipe_section(run),
    ]
    sections = [s for s in sections if s]
    found = re.findall(r'<section id="([^"]+)"[^>]*><h2>([^<]*)</h2>', "".join(sections))
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in found)
    predict = ""
    if (run.root / "model").is_dir():
        predict = (f'<p class="sub">Predict with it: <code>textxfer predict {_e(shlex.quote(str(run.root)))} '
                   "--input FILE</code></p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(sub)}</p>{predict}<nav>{nav}</nav>"
        + "".join(sections)
        + '<p class="sub">Written by textxfer report from the files of the run directory.</p></main></body></html>\n'
    )
