"""Commands that make each label count: `textxfer data issues` (suspected label errors of a recipe's training
file) and `textxfer suggest` (which unlabelled texts to label next). The work is in textxfer.tools.label_issues and
textxfer.tools.suggest; heavy libraries load inside the commands."""

from __future__ import annotations

from pathlib import Path

import click

from textxfer.core.errors import UserError
from textxfer.tools.data_check import data_group


def _progress_on_stderr() -> None:
    from textxfer.engine.setup import setup_logging

    setup_logging(None, is_main=True)


@data_group.command("issues")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value, e.g. --set data.train=noisy.csv (repeatable).")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Where to write label_issues.csv and label_issues.md (default: the recipe's output_dir).")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Stratified folds: each row is scored by a head trained on the other folds.")
@click.option("--tune-passes", type=int, default=1, show_default=True,
              help="Passes of the recipe's contrastive stage over the rows before they are embedded (0: the "
                   "pretrained body, fastest; recipes without the stage always use it).")
@click.option("--cross-fit/--no-cross-fit", default=False, show_default=True,
              help="Tune one body on each half of the rows and embed the other half with it, so no row is embedded "
                   "by a body that saw its label (same cost); --no-cross-fit tunes one body on every row.")
@click.option("--retune/--no-retune", default=True, show_default=True,
              help="Rank twice: tune the body again without the rows the first ranking flagged, then rank every row "
                   "on its embeddings (about twice the tuning time); --no-retune ranks once.")
def issues_command(recipe, overrides, output_dir, folds, tune_passes, cross_fit, retune):
    """Rank the rows of RECIPE's training file whose label is probably wrong.

    The recipe's backbone, tuned by --tune-passes passes of its contrastive stage (with --cross-fit: one body per
    half of the rows, each embedding the other half), embeds every row once; its head is trained on all folds but
    one and scores the one left out, so every row gets probabilities from a head that never saw its label;
    cleanlab flags the rows whose given label those probabilities make unlikely. With --retune (the default) a
    second body, tuned without the rows flagged, embeds the rows again and the ranking is done once more. Writes
    label_issues.csv (row, text, given_label, suggested_label, confidence, given_label_probability; `row` is the
    0-based data row of the file, header not counted), the most suspect first, and label_issues.md (the report's
    section). The data is not changed.

    \b
    Examples:
      textxfer data issues recipes/fewshot.yaml --set data.train=my.csv --set data.examples_per_class=null
      textxfer data issues my.yaml --output-dir runs/my-issues --folds 10
    """
    from textxfer.config.reading import load_recipe
    from textxfer.tools.label_issues import find_issues, write_outputs

    _progress_on_stderr()
    r = load_recipe(recipe, list(overrides))
    found = find_issues(r, folds=folds, tune_passes=tune_passes, cross_fit=cross_fit, retune=retune)
    csv_path, md_path = write_outputs(found, output_dir or r.output_dir)
    n = len(found.issues)
    click.echo(f"{n:,} of {found.rows:,} rows ({100 * n / max(found.rows, 1):.1f}%) are suspected label errors "
               f"(out-of-fold accuracy {found.oof_accuracy:.3f}, {found.folds} folds)")
    for x in found.issues[:5]:
        click.echo(f"  row {x.row}: {x.given!r} -> {x.suggested!r} ({x.confidence:.2f}): {x.text[:70]}")
    click.echo(f"label issues: {csv_path}")
    click.echo(f"report section: {md_path}")


@click.command("suggest")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--pool", required=True,
              help="Unlabelled texts: CSV/TSV/JSONL/Parquet file, or plain text (one per line), or - for stdin.")
@click.option("-k", "k", type=int, default=50, show_default=True, help="How many texts to suggest.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="CSV to write (default: suggestions.csv in RUN_DIR).")
@click.option("--text-column", default="text", show_default=True, help="Text column of a CSV/TSV/JSONL pool.")
@click.option("--pair-column", default=None,
              help="Second-text column, for sentence-pair models (default: the column the model was trained with).")
@click.option("--strategy", type=click.Choice(["typiclust-margin", "typiclust", "badge", "margin", "least-confidence"]),
              default="typiclust-margin", show_default=True,
              help="typiclust-margin: one text per cluster of the pool that labels cover least, the most uncertain "
                   "of its typical ones; typiclust: the most typical; badge: uncertain and diverse (gradient "
                   "embeddings); margin / least-confidence: uncertain only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the diverse choice (badge) and the clustering (typiclust).")
@click.option("--labelled", default="run", show_default=True, metavar="run|none|FILE",
              help="The texts already labelled: `run` reads the run's training, validation and test texts again "
                   "from its recipe.yaml; FILE reads them from a file (--text-column, labels not needed); `none` "
                   "goes without. They leave the pool, and typiclust skips the parts of the pool they cover.")
@click.option("--overwrite", is_flag=True, help="Replace --output (or RUN_DIR/suggestions.csv) if it exists.")
def suggest_command(run_dir, pool, k, output, text_column, pair_column, strategy, seed, labelled, overwrite):
    """Pick the K texts of a pool whose labels would teach the model in RUN_DIR the most.

    The run's model scores every text: how unsure it is, and where the text lies in its embedding space. The K
    chosen are spread over the pool (one per cluster that the labelled texts cover least) and each is where the
    model is unsure (no near-duplicates). Writes a CSV to label: text, an empty
    label column, score, rank, row (0-based position of the text in the pool as read: header and blank lines
    not counted). Repeated and empty pool texts, and texts already labelled (--labelled), are left out.

    \b
    Examples:
      textxfer suggest runs/fewshot --pool unlabelled.csv -k 50
      textxfer suggest runs/fewshot --pool notes.txt -k 100 --output to_label.csv
    """
    from textxfer.modalities.detect import saved_task
    from textxfer.modalities.text.predict import load
    from textxfer.tools import run_labelled
    from textxfer.tools.predict import saved_pair_column
    from textxfer.tools.predict_inputs import Inputs
    from textxfer.tools.suggest import check_k, check_output, suggest, write_suggestions

    if saved_task(run_dir) == "image":
        raise UserError(f"{run_dir} holds an image model; `textxfer suggest` ranks texts for text models.")
    target = check_output(output or Path(run_dir) / "suggestions.csv", overwrite)
    pair = pair_column if pair_column is not None else saved_pair_column(run_dir)
    why = "--pair-column" if pair_column is not None else "the column the model was trained with"
    read = list(Inputs([pool], text_column, pair, why, note_empty=False).rows())
    if k <= 0:
        check_k(k, len(read))
    texts = [text for text, _ in read]
    pairs = [second for _, second in read] if pair is not None else None
    _progress_on_stderr()
    clf = load(run_dir)
    known = (None if labelled == "none" else run_labelled.from_run(run_dir) if labelled == "run"
             else run_labelled.from_file(labelled, text_column, pair))
    chosen = suggest(clf, texts, k, pairs=pairs, strategy=strategy, seed=seed, labelled=known)
    path = write_suggestions(chosen, target, overwrite=True)  # checked above, before the work
    click.echo(f"{len(chosen)} texts to label of {len(texts):,} in the pool ({strategy}): {path}")
