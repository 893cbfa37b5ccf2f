"""`textxfer predict`: a saved model's labels for new texts (or images), streamed from input to output.

Texts are read a chunk at a time (`predict_inputs`), predicted, and written in input order before the next chunk
is read (`predict_outputs`), so memory stays flat whatever the input's size and the output grows as the work is
done. With `--num-processes N` the chunks go to N worker processes (each with the model; one GPU each where
there are GPUs) and come back in order. A killed prediction resumes: after each chunk `OUT.partial.json` records
how many input rows are done and how much of `OUT.partial` holds them; a rerun of the same command continues
there. Works the same for a PyTorch run directory and an exported folder (`textxfer export`), which needs no
torch."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from textxfer.core.errors import UserError
from textxfer.core.files import write_json
from textxfer.core.heap import trim_heap
from textxfer.core.progress import ProgressReport
from textxfer.deploy.manifest import is_export, read_manifest
from textxfer.tools.predict_inputs import Inputs
from textxfer.tools.predict_outputs import Writer, kept_names, prediction_rows

CHUNK_ROWS = 16384
"""Rows read, predicted and written at a time: enough for length-sorted batches to pad about as little as sorting
the whole input would (docs/results/predict-stream-padding.txt), a few MB of token ids."""
RESUME_VERSION = 2


def predict_stream(model_dir: str, sources: list[str], output: str | None, text_column: str = "text",
                   pair_column: str | int | None = None, top_k: int = 1, batch_size: int | None = None,
                   num_processes: int = 1, chunk_rows: int = CHUNK_ROWS,
                   say: Callable[[str], None] = lambda line: None, overwrite: bool = False,
                   keep_columns: list[str] | tuple[str, ...] = ()) -> int:
    """Predict every text of `sources` into `output` (JSONL to stdout when None); returns the rows written in
    this call. `pair_column` defaults to the column a sentence-pair model was trained with. An existing `output`
    is replaced only with `overwrite`; an input is never the output. `keep_columns`: input columns copied into
    each output row, first (an id to join the predictions on)."""
    if num_processes < 1:
        raise UserError(f"--num-processes {num_processes}: give 1 or more.")
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: give 1 or more (how many labels per text).")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give 1 or more, or leave it out for the default.")
    trained_pair = saved_pair_column(model_dir)
    pair = pair_column if pair_column is not None else trained_pair
    why = "--pair-column" if pair_column is not None else "the column the model was trained with"
    names = kept_names(keep_columns, "text")
    if len(set(names)) < len(names):
        raise UserError(f"--keep-column {' '.join(keep_columns)}: each column once (the output names them "
                        f"{', '.join(names)}).")
    for column, name in zip(keep_columns, names, strict=True):
        if name != column:
            say(f"--keep-column {column}: written as `{name}`, beside the output's own `{column}`")
    inputs = Inputs(list(sources), text_column, pair, why, say=say, keep=tuple(keep_columns))
    if output is not None:
        check_output(output, inputs.sources, overwrite)
    record = resume_record(model_dir, inputs, output, top_k, chunk_rows)
    sidecar = Path(output).with_name(Path(output).name + ".partial.json") if output else None
    done, size = resumable(sidecar, record, Writer.partial_path(output))
    if done:
        say(f"resuming: {done:,} rows already predicted in {Writer.partial_path(output)}")
    try:
        writer = Writer(output, "text", pair is not None, resume_size=size if done else None, kept=names)
        if sidecar is not None:
            write_json(sidecar, {**record, "rows": done, "size": writer.size()})
    except OSError as e:
        raise UserError(f"Cannot write --output {output}: {e.strerror or e} ({e.filename or output}). Choose a "
                        "file in a folder you can write to.") from None
    progress = ProgressReport("predict", inputs.estimated_rows(), "rows", initial=done, approximate=True, say=say,
                              show=True)
    options = {"top_k": top_k, "batch_size": batch_size}
    written = 0
    try:
        for chunk, results in predicted_chunks(model_dir, inputs, done, chunk_rows, num_processes, options):
            writer.write(prediction_rows(chunk.texts, results, chunk.pairs, "text", chunk.kept, names))
            done += len(chunk.texts)
            written += len(chunk.texts)
            if sidecar is not None:
                write_json(sidecar, {**record, "rows": done, "size": writer.size()})
            progress.update(len(chunk.texts))
        writer.finish()
    except BaseException:
        writer.close()
        if done == 0:  # stopped before any row was done (a bad first row): nothing to resume, nothing left behind
            writer.discard()
            if sidecar is not None:
                sidecar.unlink(missing_ok=True)
        raise
    finally:
        writer.close()
        progress.close()
    if sidecar is not None:
        sidecar.unlink(missing_ok=True)
    say(f"predicted {done:,} rows" + (f" into {output}" if output else ""))
    return written


def check_output(output: str, sources: list[str], overwrite: bool) -> None:
    """Refuse an output that is one of the inputs, or that exists (a finished prediction, or any other file)
    unless `overwrite`: a prediction never replaces a file the user did not ask it to."""
    target = Path(output).resolve()
    for source in sources:
        if source != "-" and Path(source).resolve() == target:
            raise UserError(f"--output {output} is also an --input: the predictions would replace the texts. "
                            "Write them to another file.")
    if target.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name in it (e.g. {Path(output) / 'preds.jsonl'}).")
    if target.exists() and not overwrite:
        raise UserError(f"--output {output} exists. Pass --overwrite to replace it, or choose another file.")


def predicted_chunks(model_dir: str, inputs: Inputs, skip: int, chunk_rows: int, processes: int, options: dict):
    """(chunk, results) in input order: in this process, or from `processes` workers with at most two chunks
    each in flight (reading never runs far ahead of writing)."""
    chunks = inputs.chunks(chunk_rows, skip=skip)
    if processes == 1:
        clf = load_worker_model(model_dir, threads=None, worker=0)
        for chunk in chunks:
            yield chunk, predict_chunk(clf, chunk.texts, chunk.pairs, options)
        return
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch or onnxruntime threads
    workers = context.Queue()
    for i in range(processes):
        workers.put(i)
    threads = max(1, (os.cpu_count() or 1) // processes)
    with context.Pool(processes, initializer=start_worker, initargs=(model_dir, threads, workers)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(worker_predict, (chunk.texts, chunk.pairs, options))))
            while len(pending) >= 2 * processes:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def predict_chunk(clf, texts: list[str], pairs: list[str] | None, options: dict) -> list[list[dict]]:
    """The classifier's labels for one chunk; texts stripped as training strips them (tokenizers such as
    RoBERTa's read a leading space)."""
    extra = {"batch_size": options["batch_size"]} if options.get("batch_size") else {}
    results = clf.predict([t.strip() for t in texts], top_k=options["top_k"],
                          pairs=[p.strip() for p in pairs] if pairs is not None else None, **extra)
    # freed blocks back to the OS: without it the PyTorch predictor's peak memory climbs chunk after chunk as freed
    # activation buffers fragment the heap; with it the climb is slow (docs/deploy.md has the figures)
    trim_heap()
    return results


WORKER_MODEL = None


def start_worker(model_dir: str, threads: int, workers) -> None:
    global WORKER_MODEL
    WORKER_MODEL = load_worker_model(model_dir, threads, workers.get())


def worker_predict(texts: list[str], pairs: list[str] | None, options: dict) -> list[list[dict]]:
    return predict_chunk(WORKER_MODEL, texts, pairs, options)


def load_worker_model(model_dir: str, threads: int | None, worker: int):
    """The classifier of one process: an exported folder on onnxruntime with `threads` threads, or the PyTorch
    model on GPU `worker` (modulo the GPUs there are) or the CPU."""
    if is_export(model_dir):
        from textxfer.deploy.text import OnnxTextClassifier

        return OnnxTextClassifier(model_dir, threads=threads)
    import torch

    from textxfer.modalities.text.predict import Classifier

    if threads:
        torch.set_num_threads(threads)
    gpus = torch.cuda.device_count()
    return Classifier(model_dir, device=f"cuda:{worker % gpus}" if gpus else "cpu")


def saved_pair_column(model_dir: str) -> str | int | None:
    """The second-text column a sentence-pair model was trained with (None otherwise), read without loading it."""
    from textxfer.core.layout import CONFIG_PAIR_COLUMN, find_model_dir

    if is_export(model_dir):
        return read_manifest(model_dir)[1].pair_column
    config = json.loads((find_model_dir(model_dir) / "config.json").read_text(encoding="utf-8"))
    return config.get(CONFIG_PAIR_COLUMN)


def resume_record(model_dir: str, inputs: Inputs, output: str | None, top_k: int, chunk_rows: int) -> dict:
    """What must be the same for a rerun to continue a partial output: the model (its folder and every file in
    it: size and modification time, so a model trained again in the same folder starts over), each input file
    (path, size, modification time), the columns and options."""
    files = [[str(Path(s).resolve()), os.path.getsize(s), os.stat(s).st_mtime_ns] if s != "-" else ["-"]
             for s in inputs.sources]
    return {"version": RESUME_VERSION, "model": str(Path(model_dir).resolve()), "model_files": model_files(model_dir),
            "inputs": files, "text_column": inputs.text_column, "pair_column": inputs.pair_column,
            "keep": list(inputs.keep), "top_k": top_k,
            "output": str(Path(output).resolve()) if output else None}


def model_files(model_dir: str) -> list[list]:
    """[relative path, size, modification time] of every file of the model folder that predicts (an exported
    folder, or a run's model folder)."""
    from textxfer.core.layout import find_model_dir

    folder = Path(model_dir) if is_export(model_dir) else find_model_dir(model_dir)
    return [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(folder.rglob("*")) if f.is_file()]


def resumable(sidecar: Path | None, record: dict, partial: Path | None) -> tuple[int, int]:
    """(rows done, partial output size) of an earlier run of the same prediction, or (0, 0)."""
    if sidecar is None or partial is None or not sidecar.is_file() or not partial.exists() \
            or ["-"] in record["inputs"]:
        return 0, 0
    try:
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return 0, 0
    if {k: saved.get(k) for k in record} != record:
        return 0, 0
    return int(saved.get("rows", 0)), int(saved.get("size", 0))


def predict_images(model_dir: str, source: str, output: str | None, top_k: int = 1) -> None:
    """`textxfer predict RUN_DIR --input IMAGE|FOLDER|LIST`: one JSONL (or CSV) row per image."""
    from textxfer.modalities.image.classifier import ImageClassifier, image_inputs

    paths = image_inputs(source)
    results = ImageClassifier(model_dir).predict(paths, top_k=top_k)
    writer = Writer(output, "image", with_pairs=False)
    try:
        writer.write(prediction_rows([str(p) for p in paths], results, None, "image"))
        writer.finish()
    finally:
        writer.close()
