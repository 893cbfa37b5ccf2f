"""The report's self-training section: for a run trained with `data.unlabelled` (history.json `self_training`),
what was removed from the unlabelled texts before labelling, and per round how many pseudo-labels were kept, their
class mix and the lowest confidence kept per class (each class's threshold, set by a count, never by test data)."""

from __future__ import annotations

import html

from textxfer.outputs.report_format import format_seconds
from textxfer.outputs.run_reading import RunFiles

REMOVED = {"empty": "without a text", "repeated": "repeated in the file", "in_train": "equal to a training text",
           "in_validation": "equal to a validation text", "in_test": "equal to a test text"}
"""What each removal count of `unlabelled_counts` means, as the section says it."""


def self_training_section(run: RunFiles) -> str:
    """The section's HTML, or "" for a run without self-training."""
    record = (run.history or {}).get("self_training")
    if not isinstance(record, dict) or not isinstance(record.get("rounds"), list):
        return ""
    e = html.escape
    counts = record.get("unlabelled_counts") or {}
    removed = [f"{int(n):,} {REMOVED[k]}" for k, n in counts.items() if k in REMOVED and n]
    intro = (f"<p class=\"sub\">Unlabelled texts: {e(str(record.get('unlabelled', '')))}; "
             f"{int(counts.get('rows_read', 0)):,} read, {int(counts.get('kept', 0)):,} usable"
             + (f" ({e(', '.join(removed))} removed: never pseudo-labelled)" if removed else "")
             + (f"; {int(counts['sampled']):,} sampled to label" if counts.get("sampled") else "") + ".</p>")
    labels = list(run.labels) or sorted({k for r in record["rounds"] for k in (r.get("per_class") or {})})
    head = ("<tr><th class='n'>round</th><th class='n'>trained on</th><th class='n'>pseudo-labels kept</th>"
            + "".join(f"<th class='n'>{e(name)}</th>" for name in labels)
            + "<th class='n'>train time</th><th class='n'>labelling time</th></tr>")
    rows = []
    for r in record["rounds"]:
        per_class, floor = r.get("per_class") or {}, r.get("min_confidence") or {}
        cells = "".join(f"<td class='n'>{_count_and_floor(per_class.get(name), floor.get(name))}</td>" for name in labels)
        kept = f"{int(r['kept']):,} of {int(r.get('scored', 0)):,}" if "kept" in r else "—"
        labelling = format_seconds(r["labelling_seconds"]) if "labelling_seconds" in r else "—"
        rows.append(f"<tr><td class='n'>{int(r.get('round', 0))}</td>"
                    f"<td class='n'>{int(r.get('training_examples', 0)):,}</td><td class='n'>{kept}</td>{cells}"
                    f"<td class='n'>{e(format_seconds(r.get('train_seconds')))}</td><td class='n'>{e(labelling)}</td>"
                    "</tr>")
    trained = {r.get("trained") for r in record["rounds"][1:]}
    what = ("the classifier alone, on round 0's model, " if trained == {"head"} else "")
    note = ("<p class=\"sub\">Round 0 trains on the labelled examples alone; each later round trains " + what
            + "on those plus the texts the model before it labelled most confidently, the same number per class. "
            "Per class: texts kept (lowest confidence kept). Only the last round reads the test split.</p>")
    precisions = [r.get("mixed_precision") for r in record["rounds"]]
    if precisions[0] is not None and any(p not in (None, precisions[0]) for p in precisions[1:]):
        note += (f"<p class=\"sub\">Round 0 trained in {e(_precision_name(precisions[0]))}, the later rounds in "
                 f"{e(_precision_name(precisions[-1]))} (`self_training.round0_mixed_precision`): round 0's model "
                 "teaches every later round.</p>")
    averaged = next((r for r in record["rounds"] if isinstance(r.get("averaged_body"), dict)), None)
    if averaged is not None:
        note += (f"<p class=\"sub\">The model: round 0's body and round {int(averaged['round'])}'s averaged weight by "
                 "weight, then the classifier trained on the averaged body over that round's texts "
                 f"({e(format_seconds(averaged['averaged_body'].get('seconds')))}).</p>")
    body = intro + f"<table>{head}{''.join(rows)}</table>" + note
    return f'<section id="self-training"><h2>Self-training</h2>{body}</section>'


def _precision_name(setting: str) -> str:
    """`no` (Accelerate's name for no mixed precision) as `fp32`; bf16 and fp16 as they are."""
    return "fp32" if setting == "no" else str(setting)


def _count_and_floor(count, floor) -> str:
    """`500 (0.982)`: texts kept for a class and the lowest confidence among them."""
    if count is None:
        return "—"
    return f"{int(count):,}" + (f" ({float(floor):.3f})" if floor is not None else "")
