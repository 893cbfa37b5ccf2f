"""The training run, top to bottom: recipe -> data -> backbone -> strategy -> Accelerate loop -> artifacts.

A plain loop a reader can follow: seed, build, then for each epoch take length-grouped batches, step AdamW
with warm-up/decay, evaluate, keep the best trainable weights; finally evaluate the test split and save a
folder that plain `transformers` loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textxfer.backbones import unwrap_peft
from textxfer.batching import BatchPlan, Collator, Encoded, encode, prefix_batches, probe_batch
from textxfer.checkpoint import Progress
from textxfer.data import column
from textxfer.errors import UserError
from textxfer.precision import (
    autocast_dtype,
    effective_mixed_precision,
    full_precision_forward,
    warn_if_emulated,
)
from textxfer.recipe import Recipe, load_recipe, save_recipe, to_dict

log = logging.getLogger("textxfer")


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict


# ------------------------------------------------------------------------------------------------ set-up

def physical_cores() -> int:
    """Physical cores this process may run on: CPUs in its affinity mask, hyper-threads of one core counted
    once, (socket, core) pairs so that two sockets' equal core ids are not merged, capped by a cgroup CPU quota
    (a container limited to 4 CPUs of a 64-core host must not start 32 threads). One thread per physical core:
    matmul threads sharing a core only contend."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = len(allowed)
    try:
        cores, cpu, socket = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu, socket = int(value), "0"
                elif key == "physical id":
                    socket = value
                elif key == "core id" and cpu in allowed:
                    cores.add((socket, value))
        n = len(cores) or n
    except (OSError, ValueError):
        pass
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def setup_logging(output_dir: Path | None, is_main: bool, append: bool = False) -> None:
    """Progress on stderr (main process only; the others report warnings) and in RUN_DIR/train.log (appended to
    when a run resumes)."""
    for handler in log.handlers:  # an earlier run's (in this process): its train.log is closed
        handler.close()
    log.handlers.clear()
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if output_dir is not None and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(output_dir / "train.log", mode="a" if append else "w", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(fh)


def prepare_output_dir(path: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to mix a new run into a finished one, or into an interrupted one's checkpoints (never lose a run)."""
    from textxfer import checkpoint

    run_json = path / "run.json"
    finished = False
    if run_json.is_file():
        try:
            finished = json.loads(run_json.read_text()).get("finished", False)
        except (OSError, json.JSONDecodeError):
            finished = False
    if finished and resuming:
        raise UserError(f"The run in {path} already finished: there is nothing to resume. Train again with "
                        "`--overwrite`, or in another `--output-dir`.")
    if finished and not overwrite:
        raise UserError(
            f"Output directory {path} already holds a finished run. Pick another `--output-dir`, or pass "
            "`--overwrite` to replace it."
        )
    saved = sorted(checkpoint.root_of(path).glob("step-*")) if checkpoint.root_of(path).is_dir() else []
    if saved and not resuming and not overwrite:
        raise UserError(
            f"Output directory {path} holds checkpoints of an unfinished run (newest: {saved[-1].name}). Continue "
            "it with `--resume`, or pass `--overwrite` to start over (its checkpoints are deleted)."
        )
    if saved and overwrite and not resuming and os.environ.get("RANK", "0") == "0":
        import shutil

        shutil.rmtree(checkpoint.root_of(path), ignore_errors=True)


def make_accelerator(recipe: Recipe):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    t = recipe.training
    use_cpu = not torch.cuda.is_available()
    if t.mixed_precision == "fp16" and use_cpu:
        raise UserError(
            "`training.mixed_precision: fp16` needs a GPU; this machine has none. Use `bf16` (fast on recent "
            "CPUs) or `no`."
        )
    from textxfer.launch import check_process_count, tracker_kwargs

    fresh_accelerate_state()
    warn_if_emulated(t.mixed_precision)
    # Gradient accumulation is done by Loop.train_step (with no_sync), not by Accelerate: every global batch is
    # cut into accumulation x processes shards there, so results do not depend on how it is cut.
    acc = Accelerator(
        mixed_precision=effective_mixed_precision(t.mixed_precision), cpu=use_cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        **tracker_kwargs(t.log_with, Path(recipe.output_dir)),
    )
    check_process_count(acc)
    return acc


def fresh_accelerate_state() -> None:
    """Forget the precision and gradient settings a previous `train()` in this process left in Accelerate.

    Accelerate keeps one `AcceleratorState` per process and refuses a second `Accelerator` with another precision,
    so a notebook, `compare` or the test suite could train only once per precision. Each run builds its own
    Accelerator; what it must share with earlier runs is only the process set-up (`PartialState`: device, process
    group), which is kept. Accelerate's own test utilities reset the same two states between tests."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def cache_dtypes(t) -> tuple[torch.dtype, torch.dtype | None]:
    """(storage dtype, autocast dtype or None) of a frozen-prefix cache pass under these training settings."""
    store = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[t.cache_dtype]
    return store, autocast_dtype(t.mixed_precision)


def fused_adamw(model: torch.nn.Module) -> dict:
    """`fused=True` where torch has the one-kernel AdamW for every trained parameter (CPU, CUDA): the default
    per-tensor AdamW runs ~10 ops per parameter tensor and was a quarter of a full fine-tune's step time on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if ok else {}


def _linear_lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`: transformers'
    `get_linear_schedule_with_warmup`, whose import (transformers.optimization pulls in peft) took about 0.2 s of
    every run that does not use peft."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_linear_lr_factor, warmup=warmup, total=total))


def default_threads() -> int:
    """Physical cores shared among the processes of this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores() // max(local, 1))


# ------------------------------------------------------------------------------------------------ model

def build_tokenizer(name: str, recipe: Recipe):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, revision=recipe.model.revision,
                                            trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not load the tokenizer of `{name}`: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        raise UserError(f"The tokenizer of `{name}` has no padding token; textxfer needs one to batch texts.")
    return tok


def param_groups(model: torch.nn.Module, parts, lr: float, head_lr: float | None,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the head may have its own learning rate."""
    from textxfer.smalldata import is_new_head

    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        is_head = is_new_head(model, parts, clean)
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((is_head, no_decay), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr": head_lr if (is_head and head_lr) else lr})
    return out


FEW_STEPS = 10
"""Fewer optimizer steps than this get a warning: a recipe made for thousands of examples, run on a few per class
(`data.examples_per_class`, `textxfer compare --examples-per-class`), keeps its epochs and batch size: `compare
recipes/agnews.yaml --strategies head --examples-per-class 8` trained the head for 2 steps and scored 0.26 on four
topics, about chance."""

CACHED_SPLITS = ("train", "validation")
"""The splits whose frozen-prefix outputs are cached: those read at every epoch. The test split is read once, after
training, by the whole model: caching it would only move that pass inside the training clock (`train_seconds`)
and make a cached strategy look slower than an uncached one in `textxfer compare`."""


def splits_to_cache(encoded: dict) -> dict:
    """The entries of `encoded` (split -> data) whose frozen-prefix outputs are cached (`CACHED_SPLITS`)."""
    return {split: data for split, data in encoded.items() if split in CACHED_SPLITS}


def set_frozen_eval(model: torch.nn.Module, parts, frozen_prefix: int) -> None:
    """Frozen parts run in eval mode (no dropout), as users expect of 'frozen' and as the cache needs."""
    if frozen_prefix < 0:
        return
    root = unwrap_peft(model)
    for path in parts.embeddings + parts.layers[:frozen_prefix]:
        root.get_submodule(path).eval()
    # modules that never train (the mean-pooling layer, a converted CNN's fixed gates): no dropout in them either,
    # so a cached and an uncached run see the same pooled features
    for path in getattr(getattr(root, "config", None), "textxfer_frozen_modules", None) or ():
        root.get_submodule(path).eval()
    # A BatchNorm with frozen weights (a CNN's last norm under `head`, every norm under `lora`) keeps its running
    # statistics: in train mode it would normalise by batch statistics and overwrite them.
    for module in root.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def shard(indices: list[int], accumulation: int, processes: int, rank: int) -> list[tuple[list[int], int]]:
    """This process's part of each micro-step of a global batch, as (indices, how many are real examples).

    The batch is cut into accumulation x processes contiguous pieces; micro-step m of process r takes piece
    m * processes + r. An empty piece (a batch smaller than the number of pieces) is one example at weight 0.
    """
    pieces = accumulation * processes
    bounds = [j * len(indices) // pieces for j in range(pieces + 1)]
    out = []
    for m in range(accumulation):
        j = m * processes + rank
        part = list(indices[bounds[j]:bounds[j + 1]])
        out.append((part, len(part)) if part else ([indices[0]], 0))
    return out


def class_weight_tensor(spec, labels: list[str], targets: np.ndarray) -> torch.Tensor | None:
    if spec in (None, "none"):
        return None
    if spec == "balanced":
        counts = np.bincount(targets, minlength=len(labels)).astype(float)
        counts[counts == 0] = 1.0
        return torch.tensor(len(targets) / (len(labels) * counts), dtype=torch.float32)
    if isinstance(spec, dict):
        unknown = [k for k in spec if str(k) not in labels]
        if unknown:
            raise UserError(f"`training.class_weights` names unknown labels {unknown}; labels are {labels}.")
        return torch.tensor([float(spec.get(lab, spec.get(str(lab), 1.0))) for lab in labels])
    raise UserError("`training.class_weights` must be `none`, `balanced` or {label: weight}.")


# ------------------------------------------------------------------------------------------------ loop

class Loop:
    """State of one training run; methods in the order they run."""

    def __init__(self, recipe: Recipe, output_dir: Path, command: str | None = None):
        self.recipe = recipe
        self.out = output_dir
        self.command = command
        self.history: dict[str, list] = {"train": [], "eval": []}
        self.started = time.time()
        self.resume_from: Path | None = None
        """The checkpoint this run continues from (`train(resume=...)`)."""
        self.cache_key: str | None = None
        """Hash of the frozen part's weights when the frozen-prefix cache is used (checked on resume)."""
        self.memory: dict = {}
        """Splits given from Python (`train(train=df)`): {split: textxfer.data.InMemory}, read instead of files."""

    # -- data and model
    def build(self) -> None:
        from accelerate.utils import set_seed

        from textxfer.backbones import (
            check_classifiable,
            input_names,
            load_classifier,
            load_config,
            resolve_model_name,
        )
        from textxfer.data import load_splits
        from textxfer.strategies import apply_strategy

        r = self.recipe
        threads = r.training.threads or default_threads()
        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.acc = make_accelerator(r)
        setup_logging(self.out, self.acc.is_main_process, append=self.resume_from is not None)
        if r.training.mixed_precision == "auto":
            log.info(f"mixed precision: auto -> {effective_mixed_precision('auto')} on this "
                     f"{'GPU' if torch.cuda.is_available() else 'CPU'}")
        set_seed(r.training.seed)
        from textxfer import vision

        self.task = vision.task_of(r)
        if self.task == "image":  # image files, the image processor and pixel batches; the same strategies
            if self.memory:
                raise UserError(f"Data given from Python (`{', '.join(f'{s}=' for s in self.memory)}`) is for text "
                                "recipes for now; this one trains an image model. Write the image paths and labels "
                                "to a CSV file and point `data.train` at it.")
            vision.build(self)
            return
        self.splits = load_splits(r.data, r.training.seed, self.memory)
        for note in self.splits.notes:
            log.info(note)
        self.labels = self.splits.labels
        if len(self.labels) < 2:
            raise UserError(f"The training data has only one label ({self.labels}); a classifier needs two or more.")
        self.model_path = resolve_model_name(r.model.name)
        check_classifiable(load_config(self.model_path, r.model.revision, r.model.trust_remote_code),
                           r.model.name, "text")
        self.tokenizer = build_tokenizer(self.model_path, r)
        set_seed(r.training.seed)  # seeded right before the model is built: the new head is reproducible
        model, self.parts = load_classifier(
            self.model_path, self.labels, multi_label=self.splits.multi_label, revision=r.model.revision,
            trust_remote_code=r.model.trust_remote_code, dropout=r.model.dropout)
        from textxfer import smalldata

        self.parts = smalldata.prepare_model(model, self.parts, r)  # model.pooling, strategy.reinit_layers
        self.applied = apply_strategy(model, self.parts, r.strategy)
        self.model = self.applied.model
        self.input_names = input_names(self.model)
        log.info(f"model {r.model.name}: {len(self.parts.layers)} layer groups; strategy {r.strategy.name}; "
                 + self.applied.summary())
        self.encoded: dict[str, Encoded] = {}
        for name, ds in self.splits.items():
            targets = column(ds, "labels" if self.splits.multi_label else "label")
            pairs = column(ds, "text_pair") if "text_pair" in ds.column_names else None
            self.encoded[name] = encode(self.tokenizer, column(ds, "text"), pairs, targets, r.model.max_length)
            enc = self.encoded[name]
            log.info(f"{name}: {len(enc)} examples, {enc.truncated} ({100 * enc.truncated / len(enc):.1f}%) "
                     f"truncated at {r.model.max_length} tokens")
        if r.training.contrastive is not None:  # SetFit-style body tuning, then the classifier (caches itself)
            from textxfer.contrastive import run_stage

            self.cache, self.features = None, None
            run_stage(self)
        else:
            self.features = self.build_cache()

    def build_cache(self) -> dict[str, list] | None:
        """Frozen-prefix outputs of the splits used while training (`CACHED_SPLITS`), computed once (or read from
        disk); None where not exact."""
        r = self.recipe
        self.cache = None
        if r.training.cache == "off":
            return None
        cache = self.new_cache(self.parts, self.applied.frozen_prefix)
        if cache is None:
            return None
        device = self.acc.device
        weights_key = cache.frozen_hash()
        self.cache_key = weights_key  # a resumed run must find the same frozen part (checkpoint.restore)
        started = time.time()
        features = {}
        for split, enc in splits_to_cache(self.encoded).items():
            key = hashlib.sha256(f"{weights_key}|{cache.data_hash(enc)}".encode()).hexdigest()[:32]
            batches = functools.partial(prefix_batches, enc, self.tokenizer.pad_token_id, self.input_names)
            features[split] = cache.load_or_compute(key, batches, device, use_disk=r.training.cache == "auto",
                                                    lengths=enc.lengths)
        above = ("the head alone, on position 0 (all it reads; the last layer's feed-forward computed it alone)"
                 if cache.cut_last else "the head alone, on position 0 (all it reads)" if cache.first_only
                 else "only the layers above")
        log.info(f"frozen-prefix cache: embeddings + {cache.k} layers computed once for "
                 f"{sum(len(f) for f in features.values())} examples in {time.time() - started:.1f}s; "
                 f"training runs {above}")
        cache.install()
        self.cache = cache
        return features

    def new_cache(self, parts, k: int, where: str = ""):
        """A frozen-prefix cache of the embeddings + lower k layers of `parts` (with the whole body frozen, the
        fixed pooling layer too), tried on a few training examples (`FrozenPrefixCache.prepare`); None, with the
        reason logged, where caching is not exact or not worth it."""
        from textxfer.features import FrozenPrefixCache, why_not
        from textxfer.smalldata import with_pooling_layer

        root = unwrap_peft(self.model)
        if k == len(parts.layers):
            parts = with_pooling_layer(root, parts)
            k = len(parts.layers)
        reason = why_not(root, parts, k, min_layers=1)
        if reason:
            log.info(f"frozen-prefix cache: not used{where} ({reason})")
            return None
        cache = FrozenPrefixCache(root, parts, k, *cache_dtypes(self.recipe.training))
        root.to(self.acc.device)
        cache.prepare(probe_batch(self.encoded["train"], self.tokenizer.pad_token_id, self.input_names),
                      self.acc.device)
        return cache

    def loader(self, split: str, train: bool, batch_size: int):
        if getattr(self, "task", "text") == "image":
            from textxfer import vision

            return vision.loader(self, split, train, batch_size)
        r = self.recipe
        enc = self.encoded[split]
        balanced = train and r.training.balanced_sampler and not self.splits.multi_label
        plan = BatchPlan(enc.lengths, batch_size, seed=r.training.seed, shuffle=train,
                         group_by_length=r.training.group_by_length,
                         classes=np.asarray(enc.targets, dtype=np.int64) if balanced else None)
        features = self.features.get(split) if self.features else None
        dl = torch.utils.data.DataLoader(range(len(enc)), batch_sampler=plan,
                                         collate_fn=Collator(enc, self.tokenizer.pad_token_id, with_index=True,
                                                             features=features),
                                         num_workers=r.training.num_workers)
        return plan, dl

    def prepare(self) -> None:
        from textxfer.launch import check_enough_examples

        t = self.recipe.training
        n_proc = self.acc.num_processes
        micro = t.batch_size // t.gradient_accumulation_steps
        if micro % n_proc:
            raise UserError(
                f"`training.batch_size` {t.batch_size} / accumulation {t.gradient_accumulation_steps} = {micro} "
                f"cannot be split over {n_proc} processes; make it a multiple of that."
            )
        # The plan yields GLOBAL batches; train_step cuts each into accumulation x processes shards.
        self.plan, self.train_dl = self.loader("train", True, t.batch_size)
        check_enough_examples(len(self.train_dl.dataset), n_proc)
        self.steps_per_epoch = len(self.plan)
        self.total_steps = max(1, math.ceil(self.steps_per_epoch * t.epochs))
        if n_proc > 1:
            self.freeze_unused()
        from textxfer import smalldata

        optimizer = torch.optim.AdamW(smalldata.param_groups(self), lr=t.learning_rate,  # + training.layer_lr_decay
                                      **fused_adamw(self.model))
        scheduler = linear_schedule(optimizer, int(t.warmup_ratio * self.total_steps), self.total_steps)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(self.model, optimizer, scheduler)
        smalldata.install_schedule(self)  # training.head_warmup_epochs, strategy gradual
        # training.head_l2 is against the summed loss; our loss is the mean over the examples: divide by their number
        self.head_l2 = None
        if t.head_l2:
            matrices = smalldata.head_weight_matrices(self.acc.unwrap_model(self.model), self.parts)
            self.head_l2 = functools.partial(smalldata.add_head_l2, matrices, t.head_l2 / len(self.encoded["train"]))
            log.info(f"training.head_l2 {t.head_l2:g}: L2 penalty on {len(matrices)} head weight matrices "
                     f"({sum(m.numel() for m in matrices):,} weights)")
        self.progress = Progress()
        self.best: dict | None = None
        self.best_state: dict | None = None
        self.eval_dls = {}
        for split in ("validation", "test"):
            if split in self.encoded:
                _, dl = self.loader(split, False, self.eval_batch_size())
                self.eval_dls[split] = self.acc.prepare(dl)
        weights = class_weight_tensor(t.class_weights, self.labels, self.encoded["train"].targets) \
            if not self.splits.multi_label else None
        self.class_weights = weights.to(self.acc.device) if weights is not None else None
        if n_proc > 1:
            log.info(f"distributed: {n_proc} processes (num_processes: {n_proc}, {self.acc.distributed_type.value}, "
                     f"backend {self.acc.state.backend}); only process 0 writes files")
        log.info(f"batch: {t.batch_size} global = {micro // n_proc} per device x "
                 f"{n_proc} processes x {t.gradient_accumulation_steps} accumulation; "
                 f"{self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all")
        if self.total_steps < FEW_STEPS:
            log.warning(f"training makes only {self.total_steps} optimizer step(s) ({len(self.encoded['train'])} "
                        f"training examples, training.batch_size {t.batch_size}, training.epochs {t.epochs:g}): too "
                        f"few to learn much. Raise training.epochs or lower training.batch_size (recipes/fewshot.yaml "
                        f"trains its classifier for 30 epochs at batch 16).")

    def eval_batch_size(self) -> int:
        """Global batch size of the evaluation loaders: the training micro-batch, at least 64 per process."""
        t = self.recipe.training
        return max(t.batch_size // t.gradient_accumulation_steps, 64) * self.acc.num_processes

    def freeze_unused(self) -> None:
        """DDP wants a gradient for every trainable parameter at every step. One forward/backward on two examples
        (random state put back) finds trainable parameters the forward never uses (a head part this model does
        not call); they are frozen, which changes nothing: AdamW skips parameters without a gradient."""
        self.model.to(self.acc.device)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        cpu_rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            batch = self.to_device(self.train_dl.collate_fn(list(range(min(2, len(self.train_dl.dataset))))))
            self.train_mode()
            with self.acc.autocast():
                self.logits(batch).float().sum().backward()
            unused = [n for n, p in trainable if p.grad is None]
        finally:
            for _, p in trainable:
                p.grad = None
            torch.random.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        for n, p in trainable:
            if n in unused:
                p.requires_grad_(False)
        if unused:
            log.info(f"frozen {len(unused)} trainable parameters that the forward pass never uses (DDP needs a "
                     f"gradient for each): {', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}")

    def logits(self, batch: dict) -> torch.Tensor:
        if getattr(self, "task", "text") == "image":
            from textxfer import vision

            return vision.logits(self, batch)
        inputs = {k: batch[k] for k in self.input_names if k in batch}
        if self.cache is not None:
            self.cache.slot.current = batch["prefix"].to(self.acc.device, torch.float32)
            inputs = self.cache.inputs(inputs)
        return self.model(**inputs).logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The mean loss, or with reduction `none` one (class-weighted) value per example."""
        logits = logits.float()
        if self.splits.multi_label:
            per_label = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
            return per_label.mean() if reduction == "mean" else per_label.mean(-1)
        return torch.nn.functional.cross_entropy(logits, targets, weight=self.class_weights, reduction=reduction)

    # -- the loop
    def fit(self) -> None:
        """Train until the planned steps are done or early stopping says stop, from where `progress` stands
        (zero, or a restored checkpoint). SIGINT/SIGTERM save a checkpoint at the end of the step, then exit."""
        from tqdm.auto import tqdm

        from textxfer import checkpoint

        t = self.recipe.training
        p = self.progress
        if t.early_stopping is not None and "validation" not in self.eval_dls:
            raise UserError("`training.early_stopping` watches the validation metrics, but this run has no validation "
                            "split: give `data.validation` or a `data.validation_split` above 0, or drop early stopping.")
        self.start_tracking()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", leave=False,
                   disable=not (self.acc.is_main_process and sys.stderr.isatty()))
        with checkpoint.StopSignals() as signals:
            while p.step < self.total_steps and p.stopped_early is None:
                batches = self.epoch_batches(p.epoch)
                self.train_mode()
                for i in range(p.batch, len(batches)):
                    p.running += self.train_step(batches[i])
                    p.seen += 1
                    p.step, p.batch = p.step + 1, i + 1
                    bar.update(1)
                    epoch_float = p.step / self.steps_per_epoch
                    end = p.batch == len(batches) or p.step >= self.total_steps
                    if p.step % t.log_every == 0 or p.step == self.total_steps:
                        self.log_train(epoch_float, bar)
                    evaluated = end or bool(t.eval_every and p.step % t.eval_every == 0)
                    if evaluated:
                        self.evaluate_and_track(p.step, epoch_float)
                        self.after_eval()
                    if p.batch == len(batches):
                        p.epoch, p.batch = p.epoch + 1, 0
                    saved = checkpoint.save(self) if self.checkpoint_due() else None
                    signum = self.signal_received(signals)
                    if signum:
                        self.interrupt(signum, saved)
                    if end or p.stopped_early is not None:
                        break
                    if evaluated:
                        self.train_mode()
        bar.close()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch: a pure function of (seed, epoch), so resume can skip to any batch."""
        self.plan.set_epoch(epoch)
        return [list(b) for b in self.plan]

    def train_mode(self) -> None:
        self.model.train()
        set_frozen_eval(self.acc.unwrap_model(self.model), self.parts, self.applied.frozen_prefix)

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def batch_weight(self, indices: list[int]) -> float:
        """What a global batch's summed example losses are divided by: its size, or its summed class weights."""
        if self.class_weights is None or self.splits.multi_label:
            return float(len(indices))
        targets = torch.as_tensor(np.asarray(self.encoded["train"].targets)[indices], device=self.class_weights.device)
        return float(self.class_weights[targets].sum())

    def train_step(self, indices: list[int]) -> float:
        """One optimizer step on one global batch; returns this process's share of the batch's mean loss.

        The batch is cut the same way whatever the set-up: into accumulation x processes shards, each example's
        loss divided by the whole batch's weight. So 1 process x 2 accumulation steps and 2 processes x 1 add up
        the same gradient, and an uneven last batch needs no duplicated examples (a process left without one runs
        an example at weight 0)."""
        t = self.recipe.training
        accum, n_proc = t.gradient_accumulation_steps, self.acc.num_processes
        norm = self.batch_weight(indices)
        share = 0.0
        for m, (idx, real) in enumerate(shard(indices, accum, n_proc, self.acc.process_index)):
            batch = self.to_device(self.train_dl.collate_fn(idx))
            sync = contextlib.nullcontext() if m == accum - 1 else self.acc.no_sync(self.model)
            with sync:
                per_example = self.loss(self.logits(batch), batch["targets"], reduction="none")
                weight = torch.zeros(len(idx), device=per_example.device)
                weight[:real] = 1.0
                loss = (per_example * weight).sum() / norm
                self.acc.backward(loss * n_proc)  # DDP averages the processes' gradients; we want their sum
            share += loss.detach().item()
        if self.head_l2 is not None:
            self.head_l2()
        if t.max_grad_norm:
            self.acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return share

    def log_train(self, epoch: float, bar) -> None:
        """Record the mean training loss since the last record (summed over processes: the global batch loss)."""
        p = self.progress
        total = torch.tensor([p.running], dtype=torch.float64, device=self.acc.device)
        if self.acc.num_processes > 1:
            total = self.acc.reduce(total, reduction="sum")
        mean = float(total.item()) / max(p.seen, 1)
        lr = self.scheduler.get_last_lr()[0]
        self.history["train"].append({"step": p.step, "epoch": round(epoch, 4), "loss": mean, "learning_rate": lr})
        self.acc.log({"train/loss": mean, "train/learning_rate": lr}, step=p.step)
        bar.set_postfix(loss=f"{mean:.4f}")
        p.running, p.seen = 0.0, 0

    def after_eval(self) -> None:
        """Send the evaluation to the trackers; count evaluations without improvement for early stopping."""
        p, t = self.progress, self.recipe.training
        entry = self.history["eval"][-1] if self.history["eval"] else None
        if entry is None or entry["step"] != p.step:
            return
        self.acc.log({f"validation/{k}": v for k, v in entry.items()
                      if k not in ("step", "epoch", "split") and isinstance(v, (int, float))}, step=p.step)
        es = t.early_stopping
        if es is None:
            return
        name = es.metric or t.metric
        if name not in entry:
            available = ", ".join(k for k in entry if k not in ("step", "epoch", "split"))
            raise UserError(f"`training.early_stopping.metric` is {name!r}; available: {available}.")
        value, lower_better = entry[name], name == "loss"
        gain = None if p.watch_best is None else (p.watch_best - value if lower_better else value - p.watch_best)
        if gain is None or gain > es.min_delta:
            p.watch_best, p.bad_evals = value, 0
            return
        p.bad_evals += 1
        if p.bad_evals >= es.patience and p.step < self.total_steps:
            p.stopped_early = {"step": p.step, "epoch": entry["epoch"], "metric": name, "best": p.watch_best}
            log.info(f"early stopping at step {p.step}: validation {name} has not improved by more than "
                     f"{es.min_delta} for {p.bad_evals} evaluations (best {p.watch_best:.4f})")

    def checkpoint_due(self) -> bool:
        every, p = self.recipe.training.checkpoint_every, self.progress
        if every is None or not self.checkpoints_supported():
            return False
        if every == "epoch":
            return p.batch == 0
        return p.step % every == 0

    def checkpoints_supported(self) -> bool:
        kind = self.acc.distributed_type.value
        if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
            if not getattr(self, "_warned_sharded", False):
                log.warning(f"warning: textxfer checkpoints cover single-process and DDP runs; with {kind} they are "
                            "not written (the final model still is)")
                self._warned_sharded = True
            return False
        return True

    def signal_received(self, signals) -> int:
        """The signal number if any process got SIGINT/SIGTERM (agreed by all processes), else 0."""
        signum = signals.received or 0
        if self.acc.num_processes > 1:
            flags = self.acc.gather(torch.tensor([signum], device=self.acc.device))
            signum = int(flags.max().item())
        return signum

    def interrupt(self, signum: int, saved: Path | None = None) -> None:
        """Save a checkpoint (unless one was just saved at this step), say how to resume, exit with 128 + signum."""
        import signal as signal_module

        from textxfer import checkpoint

        if saved is None and self.checkpoints_supported():
            saved = checkpoint.save(self, reason=signal_module.Signals(signum).name)
        self.end_tracking()
        if saved is not None:
            again = (self.command or "textxfer train RECIPE").replace(" --overwrite", "")
            again += "" if "--resume" in again else " --resume"
            log.info(f"stopped at step {self.progress.step} of {self.total_steps}; checkpoint {saved}. Continue "
                        f"with: {again}")
        raise SystemExit(128 + signum)

    def start_tracking(self) -> None:
        if self.recipe.training.log_with == "none":
            return
        from textxfer.launch import flat_config

        self.acc.init_trackers("textxfer", config=flat_config(to_dict(self.recipe)))

    def end_tracking(self) -> None:
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers = []

    @torch.inference_mode()
    def predict_split(self, split: str, dl=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, targets, example indices) of a split (through `dl`, default its evaluation loader), gathered
        over processes without duplicates."""
        self.model.eval()
        outs, targets, index = [], [], []
        for batch in dl if dl is not None else self.eval_dls[split]:
            logits = self.logits(batch).float()
            g_logits, g_targets, g_index = self.acc.gather_for_metrics(
                (logits, batch["targets"], batch["index"]))
            outs.append(g_logits.cpu())
            targets.append(g_targets.cpu())
            index.append(g_index.cpu())
        logits = torch.cat(outs).numpy()
        order = np.argsort(torch.cat(index).numpy(), kind="stable")
        return logits[order], torch.cat(targets).numpy()[order], torch.cat(index).numpy()[order]

    def score(self, split: str) -> tuple[dict, dict, np.ndarray]:
        """(metrics incl. loss, per-class table, logits) of a split."""
        from textxfer.metrics import classification_metrics

        logits, targets, _ = self.predict_split(split)
        loss = float(self.loss(torch.from_numpy(logits), torch.from_numpy(targets)).item())
        if self.splits.multi_label:
            metrics, per_class = self.multilabel_scores(split, logits, targets)
        else:
            metrics, per_class = classification_metrics(logits.argmax(-1), targets, self.labels)
        metrics["loss"] = loss
        return metrics, per_class, logits

    def multilabel_scores(self, split: str, logits: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
        """Sigmoid probabilities; thresholds tuned on validation (then applied unchanged to test)."""
        from textxfer.metrics import multilabel_metrics, sigmoid, tune_thresholds

        probs = sigmoid(logits)
        mode = self.recipe.training.threshold
        if isinstance(mode, (int, float)) and not isinstance(mode, bool):
            self.thresholds = np.full(len(self.labels), float(mode), dtype=np.float32)
        elif mode in ("global", "per_label"):
            if split == "validation":  # never on the test set: without validation `finish` sets them beforehand
                self.thresholds = tune_thresholds(probs, targets.astype(np.float32), mode)
        else:
            raise UserError(f"`training.threshold` is {mode!r}; use global, per_label or a number in (0, 1).")
        return multilabel_metrics(probs, targets, self.labels, self.thresholds)

    def thresholds_without_validation(self) -> np.ndarray:
        """No validation split to tune the thresholds on (and never the test labels): the one threshold that
        maximises the micro-F1 expected under the model's own probabilities on the training texts. With few
        examples the head's probabilities are calibrated (`training.head_l2`) and 0.5 would leave most labels out."""
        from textxfer.metrics import expected_f1_thresholds, sigmoid

        _, dl = self.loader("train", False, 64 * self.acc.num_processes)
        logits, _, _ = self.predict_split("train", self.acc.prepare(dl))
        thresholds = expected_f1_thresholds(sigmoid(logits))
        log.info(f"multi-label thresholds: no validation split to tune them on (`training.threshold: "
                 f"{self.recipe.training.threshold}`): {thresholds[0]:.2f}, the threshold that maximises the micro-F1 "
                 f"expected under the model's probabilities on the training texts. Give `data.validation` or "
                 f"`data.validation_split` to tune them on labelled examples.")
        return thresholds

    def evaluate_and_track(self, step: int, epoch: float) -> None:
        if "validation" not in self.eval_dls:
            return
        metrics, per_class, logits = self.score("validation")
        self.last_validation = (step, metrics, per_class, logits)
        entry = {"step": step, "epoch": round(epoch, 4), "split": "validation", **metrics}
        self.history["eval"].append(entry)
        name = self.recipe.training.metric
        if name not in metrics:
            raise UserError(f"`training.metric` is {name!r}; available: {', '.join(sorted(metrics))}.")
        lower_better = name == "loss"
        better = self.best is None or (metrics[name] < self.best[name] if lower_better
                                       else metrics[name] > self.best[name])
        if better:
            self.best = dict(entry)
            self.keep_best()
        log.info(f"epoch {epoch:.2f} step {step}: " + ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("loss", "accuracy", "macro_f1") if k in metrics)
            + (" (best)" if better else ""))

    def best_file(self) -> Path:
        return self.out / f".best-weights-{self.acc.process_index}.safetensors"

    def keep_best(self) -> None:
        """The trainable weights of the best evaluation, to restore at the end. Written to a file in the run
        directory and mapped back: a full fine-tune's copy (90 MB for MiniLM) then takes page cache, not process
        memory. In memory where the file cannot be written."""
        from textxfer.features import map_safetensors, write_safetensors

        model = self.acc.unwrap_model(self.model)
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        path = self.best_file()
        tmp = path.with_name(path.name + ".tmp")
        try:
            write_safetensors(tmp, params)
            os.replace(tmp, path)
            self.best_state = map_safetensors(path)
        except OSError as e:
            log.warning(f"could not write the best weights to {path} ({e}); keeping them in memory")
            tmp.unlink(missing_ok=True)
            self.best_state = {k: v.clone() for k, v in params.items()}

    def restore_best(self) -> None:
        if self.best_state is None:
            return
        model = self.acc.unwrap_model(self.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.best_state.items():
                params[k].copy_(v)
        self.best_state = None
        self.best_file().unlink(missing_ok=True)

    # -- results
    def finish(self) -> dict:
        from textxfer import artifacts

        self.restore_best()
        self.train_seconds = time.time() - self.started
        self.end_tracking()
        last = getattr(self, "last_validation", None)
        if effective_mixed_precision(self.recipe.training.mixed_precision) != "no":
            self.score_in_full_precision()
            last = None
        with full_precision_forward(self.acc.unwrap_model(self.model)):
            results = self.final_scores(last)
        if self.cache is not None:
            self.cache.uninstall()
        if self.acc.is_main_process:
            artifacts.write_run(self, *results)
        self.acc.wait_for_everyone()
        return results[0]

    def score_in_full_precision(self) -> None:
        """Score the final model as it is saved: the whole model in fp32, no frozen-prefix cache (whose features
        were computed under autocast). A run that trained in bf16 then reports the metrics, and writes the
        predictions, that loading its model folder reproduces (`textxfer evaluate`, `pipeline()`)."""
        if self.cache is not None:
            self.cache.uninstall()
            self.cache = None
        self.features = None
        for split in list(self.eval_dls):
            _, dl = self.loader(split, False, self.eval_batch_size())
            self.eval_dls[split] = self.acc.prepare(dl)

    def final_scores(self, last) -> tuple[dict, dict]:
        """(results for metrics.json, logits per split) of the restored best model."""
        scores, predictions, per_class_all = {}, {}, {}
        if self.splits.multi_label and "validation" not in self.eval_dls and \
                self.recipe.training.threshold in ("global", "per_label"):  # the saved model needs its thresholds
            self.thresholds = self.thresholds_without_validation()
        for split in self.eval_dls:
            if self.cache is not None and split not in (self.features or {}):
                self.cache.uninstall()  # the test split, not cached: scored by the whole model
                self.cache = None
            if split == "validation" and last is not None and last[0] == self.progress.step and \
                    self.best is not None and self.best["step"] == last[0]:
                _, metrics, per_class, logits = last  # the last evaluation was the best: that is the saved model
            else:
                metrics, per_class, logits = self.score(split)
            scores[split] = metrics
            per_class_all[split] = per_class
            predictions[split] = logits
        # the held-out test score first: it is the figure a reader (or a script taking the first `accuracy`) wants
        results: dict = {"best_metric": self.recipe.training.metric, "num_processes": self.acc.num_processes}
        results.update({split: scores[split] for split in sorted(scores, key=lambda s: s != "test")})
        if self.best is not None:
            results["best"] = {k: v for k, v in self.best.items() if k != "split"}
        if self.progress.stopped_early is not None:
            results["stopped_early"] = self.progress.stopped_early
        results["per_class"] = per_class_all
        if self.splits.multi_label and getattr(self, "thresholds", None) is not None:
            results["thresholds"] = [round(float(t), 4) for t in self.thresholds]
        return results, predictions


def train(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None, output_dir: str | Path | None = None,
          overwrite: bool = False, command: str | None = None, resume: str | Path | bool | None = None, *,
          train=None, validation=None, test=None) -> RunResult:
    """Train as the recipe says and write the run directory. Python twin of `textxfer train`.

    `resume`: True (or "") continues from the newest complete checkpoint in the output directory; a path names a
    run directory or one checkpoint folder, whose run directory is then the output directory unless one is given.

    `train`, `validation`, `test`: data from Python, a pandas DataFrame or a `datasets.Dataset` with the columns the
    recipe names (`data.text_column`, `data.label_column`...), in place of the recipe's `data.<split>` files; read
    exactly as a file with the same rows. The saved recipe says `<in-memory pandas.DataFrame, N rows, fingerprint
    ...>` there, run.json records each one's type, rows, columns and fingerprint; a resume needs the same data again.
    """
    from textxfer import checkpoint
    from textxfer.data import IN_MEMORY_PREFIX, in_memory

    memory = {split: in_memory(split, value) for split, value in
              (("train", train), ("validation", validation), ("test", test)) if value is not None}
    given = {split: m.describe() for split, m in memory.items()}
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides, in_memory=given)
    elif isinstance(recipe, dict):
        recipe = load_recipe(data=recipe, overrides=overrides, in_memory=given)
    elif overrides or memory:
        recipe = load_recipe(data=to_dict(recipe), overrides=overrides, in_memory=given)
    if output_dir is not None:
        recipe.output_dir = str(output_dir)
    ckpt, notes = None, []
    if resume is not None and resume is not False:
        where = Path(recipe.output_dir) if resume in (True, "") else Path(resume)
        ckpt, notes = checkpoint.find(where)
        if output_dir is None:
            recipe.output_dir = str(ckpt.parent.parent)
        saved = checkpoint.read_state(ckpt).get("recipe", {})
        current = to_dict(recipe)
        for split in memory:  # in-memory data is compared by its rows' fingerprints (checkpoint.restore), as files are
            before = (saved.get("data") or {}).get(split)
            if isinstance(before, str) and before.startswith(IN_MEMORY_PREFIX):
                current["data"][split] = before
        notes += checkpoint.check_recipe(_with_defaults(saved), current)
    out = Path(recipe.output_dir)
    prepare_output_dir(out, overwrite, resuming=ckpt is not None)
    loop = Loop(recipe, out, command)
    loop.resume_from = ckpt
    loop.memory = memory
    threads = torch.get_num_threads()
    try:  # the run sets torch's thread count for itself; the host process gets its own back, even on failure
        loop.build()
        for note in notes:
            log.info(note)
        if loop.acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, out / "recipe.yaml")
        loop.prepare()
        if ckpt is not None:
            checkpoint.restore(loop, ckpt)
        loop.fit()
        metrics = loop.finish()
    finally:
        torch.set_num_threads(threads)
    return RunResult(out, metrics)


def _with_defaults(saved: dict) -> dict:
    """A checkpoint's recipe with today's defaults filled in (keys added since it was written are not changes)."""
    import copy

    try:
        return to_dict(load_recipe(data=copy.deepcopy(saved)))
    except Exception:  # a damaged saved recipe: compared as it is (check_recipe refuses what cannot be compared)
        return saved
