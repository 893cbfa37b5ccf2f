"""`textxfer export` and `textxfer predict`: deploy a trained model and run it over texts of any size."""

from __future__ import annotations

import click

from textxfer.core.errors import UserError


def say(line: str) -> None:
    click.echo(line, err=True)


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option("--quantize", type=click.Choice(["none", "int8"]), default="none", show_default=True,
              help="int8: weights in int8 (about 4x smaller, 2-4x faster on CPUs; decisions checked against fp32).")
@click.option("--fp32-matmuls", type=int, default=None, metavar="N",
              help="With --quantize int8: keep the N MatMuls with the most outlying inputs in fp32 (default: 1 in "
                   "12 of them; 0: every one int8).")
@click.option("--opset", type=int, default=None, help="ONNX opset to target (default: the exporter's, 18+).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is an earlier export.")
def export_command(run_dir, out, quantize, fp32_matmuls, opset, overwrite):
    """Export a trained model (a run directory or its model folder) to OUT for prediction with onnxruntime,
    without torch: the ONNX graph, tokenizer.json and textxfer_export.json (labels, token limit, pair column,
    thresholds, pooling). Needs `pip install 'textxfer[onnx]'`.

    \b
    Examples:
      textxfer export runs/sst2 runs/sst2-onnx
      textxfer export runs/sst2 runs/sst2-int8 --quantize int8
      textxfer predict runs/sst2-int8 --input reviews.csv --output preds.jsonl
    """
    from textxfer.outputs.onnx_export import export_run

    result = export_run(run_dir, out, quantize=quantize, opset=opset, overwrite=overwrite, say=say,
                        fp32_matmuls=fp32_matmuls)
    m = result.manifest
    model = result.folder / m.model_file
    click.echo(f"exported {m.family} ({m.quantize if m.quantize != 'none' else 'fp32'}, opset {m.opset}, "
               f"{model.stat().st_size / 1e6:.1f} MB): {model}")
    click.echo(f"predict: textxfer predict {result.folder} --input FILE   (python: textxfer.load('{result.folder}'))")


@click.command("predict")
@click.argument("model_dir", type=click.Path(exists=True))
@click.option("--input", "sources", multiple=True, default=["-"], show_default=True,
              help="CSV/TSV/JSONL/Parquet file, plain text (one per line), or - for stdin; repeat for several "
                   "files (read in turn). Image models: an image, a folder, or a list of paths.")
@click.option("--output", type=click.Path(dir_okay=False),
              help="Write .jsonl, .csv, .tsv or .parquet here (default: JSONL to stdout). Written as OUT.partial "
                   "and renamed when complete; rerun the same command to resume a killed run.")
@click.option("--text-column", default="text", show_default=True, help="Text column of CSV/TSV/JSONL/Parquet input.")
@click.option("--pair-column", default=None,
              help="Second-text column, for sentence-pair models (default: the column the model was trained with).")
@click.option("--top-k", type=int, default=1, show_default=True, help="How many labels per text.")
@click.option("--batch-size", type=int, default=None, help="Texts per forward pass (default: 64, exports 32).")
@click.option("--num-processes", type=int, default=1, show_default=True,
              help="Predict in N processes (one GPU each where there are GPUs); output order is kept.")
@click.option("--keep-column", "keep_columns", multiple=True,
              help="Copy this input column (an id, a date) into every output row, first; repeat for several. "
                   "CSV/TSV/JSONL/Parquet input.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists (never an --input).")
def predict_command(model_dir, sources, output, text_column, pair_column, top_k, batch_size, num_processes,
                    keep_columns, overwrite):
    """Predict labels with a trained model: a run directory, its model folder, or an exported folder
    (`textxfer export`, runs without torch). Input is streamed: memory stays flat for any number of rows.

    \b
    Examples:
      textxfer predict runs/quickstart --input news.txt
      echo "What a great film" | textxfer predict runs/sst2
      textxfer predict runs/sst2 --input reviews.csv --text-column review --output preds.csv --top-k 2
      textxfer predict runs/sst2 --input reviews.jsonl --keep-column id --output preds.jsonl
      textxfer predict runs/sst2-int8 --input archive.parquet --output labels.parquet --num-processes 2
      textxfer predict runs/mnli --input pairs.csv --text-column premise --pair-column hypothesis
    """
    from textxfer.modalities.detect import saved_task

    if saved_task(model_dir) == "image":
        if pair_column is not None:
            raise UserError("--pair-column is for sentence-pair text models; this is an image model.")
        if len(sources) != 1:
            raise UserError("Image models take one --input: an image, a folder of images, or a list of paths.")
        if keep_columns:
            raise UserError("--keep-column is for text models' tables; an image model's output names each image.")
        from textxfer.tools.predict import predict_images

        predict_images(model_dir, sources[0], output, top_k)
        return
    from textxfer.tools.predict import predict_stream

    predict_stream(model_dir, list(sources), output, text_column=text_column, pair_column=pair_column,
                   top_k=top_k, batch_size=batch_size, num_processes=num_processes, say=say, overwrite=overwrite,
                   keep_columns=keep_columns)

