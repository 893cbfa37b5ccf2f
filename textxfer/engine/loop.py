"""The training loop on Accelerate: build (the modality's data and model, the strategy, the cache or the
contrastive stage), then for each epoch take the batches, step AdamW with warm-up/decay, evaluate, keep the best
trainable weights; finally score the best model in fp32. `textxfer.tools.train` runs it and writes the run.

`Loop` holds the run's state and its flow (build, prepare, fit, train_step, finish); the pieces it calls live
beside it: `setup` (accelerator, logging, output folder), `batches` (shards, class weights, loss), `evaluation`
(scores, thresholds, early stopping, final fp32 scores), `best_weights`, `tracking`, `checkpoint` and
`interruption`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from textxfer.config.schema import Recipe, to_dict
from textxfer.core.errors import UserError
from textxfer.core.hardware import default_threads
from textxfer.core.precision import effective_mixed_precision, full_precision_forward
from textxfer.core.progress import ProgressReport
from textxfer.engine import checkpoint, evaluation, sharding
from textxfer.engine.batches import (
    batch_weight,
    class_weight_tensor,
    classification_loss,
    log_batch_plan,
    shard,
)
from textxfer.engine.best_weights import restore_best
from textxfer.engine.distributed import check_same_run
from textxfer.engine.evaluation import (
    after_evaluation,
    evaluate_and_track,
    final_scores,
    score_in_full_precision,
)
from textxfer.engine.interruption import StopSignals, interrupt, signal_received
from textxfer.engine.optim import (
    add_head_l2,
    fused_adamw,
    head_weight_matrices,
    linear_schedule,
    optimizer_groups,
)
from textxfer.engine.run_state import RunState
from textxfer.engine.schedule import new_schedule
from textxfer.engine.setup import attach_run_log, clear_replaced_run, make_accelerator, setup_logging
from textxfer.engine.tracking import end_tracking, log_train, start_tracking
from textxfer.engine.unused_parameters import freeze_unused_parameters
from textxfer.strategies.apply import set_frozen_eval

log = logging.getLogger("textxfer")


class Loop:
    """State of one training run; methods in the order they run."""

    def __init__(self, recipe: Recipe, output_dir: Path, command: str | None = None,
                 resume_from: Path | None = None, memory: dict | None = None, replacing: bool = False):
        self.recipe = recipe
        self.out = output_dir
        self.command = command
        self.state = RunState()
        """What the run has recorded so far (progress, history, best evaluation and weights, thresholds)."""
        self.started = time.time()
        self.resume_from = resume_from
        """The checkpoint this run continues from (`train(resume=...)`)."""
        self.replacing = replacing
        """`--overwrite`: an earlier run in the output directory is removed once this one's data and model load."""
        self.cache_key: str | None = None
        """Hash of the frozen part's weights when the frozen-prefix cache is used (checked on resume)."""
        self.memory: dict = memory or {}
        """Splits given from Python (`train(train=df)`): {split: textxfer.data.memory.InMemory}, read instead of files."""
        self.cache = None
        """The installed frozen-prefix cache (`use_cache`), if any, and its features per split."""
        self.features: dict | None = None

    # -- data and model
    def build(self) -> None:
        """Read the data, load the classifier, apply the strategy, then the contrastive stage or the cache."""
        from accelerate.utils import set_seed

        from textxfer.backbones.load import resolve_model_name
        from textxfer.modalities.detect import modality_of

        r = self.recipe
        threads = r.training.threads or default_threads()
        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.acc = make_accelerator(r)
        setup_logging(self.out, self.acc.is_main_process, append=self.resume_from is not None,
                      deferred=self.replacing)
        if r.training.mixed_precision == "auto":
            log.info(f"mixed precision: auto -> {effective_mixed_precision('auto')} on this "
                     f"{'GPU' if torch.cuda.is_available() else 'CPU'}")
        else:
            log.info(f"mixed precision: {r.training.mixed_precision}")
        set_seed(r.training.seed)
        self.modality = modality_of(r)
        self.splits = self.modality.read(r, self.memory)  # its notes are logged as they are found (data.notes)
        self.labels = self.splits.labels
        if len(self.labels) < 2:
            raise UserError(f"The training data has only one class ({self.labels}); a classifier needs two or more.")
        evaluation.check_metric_names(r, self.splits.multi_label)
        self.model_path = resolve_model_name(r.model.name)
        model, parts = self.modality.load_model(r, self.model_path, self.splits)
        self.parts, self.applied = self.adapt(model, parts)
        self.model = self.applied.model
        log.info(f"model {r.model.name}: {len(self.parts.layers)} layer groups; strategy {r.strategy.name}; "
                 + self.applied.summary())
        self.encoded = self.modality.encode(r, self.splits)
        check_same_run(self.acc, to_dict(r), lambda: self.modality.fingerprints(self))  # several processes
        if self.replacing:
            self.replace_earlier_run()
        if r.training.contrastive is not None:  # SetFit-style body tuning, then the classifier
            from textxfer.engine.contrastive import run_stage

            result = run_stage(self.stage_context())
            self.applied = result.applied
            self.state.history.update(result.history)
            self.use_cache(self.cache_after_stage(result))
        else:
            self.use_cache(self.modality.build_cache(self))

    def replace_earlier_run(self) -> None:
        """Remove the earlier run this one replaces (`--overwrite`), now that the data and model have loaded, and
        start train.log with the lines logged so far."""
        if self.acc.is_main_process:
            clear_replaced_run(self.out)
            attach_run_log(self.out)
        self.acc.wait_for_everyone()

    def cache_after_stage(self, result):
        """What trains after the stage reads from a cache: with `then: head` after tuning, the whole tuned body
        (and its pooling layer), in memory; otherwise the run's usual cache of the frozen prefix."""
        from textxfer.backbones.prefix_cache import splits_to_cache

        t = self.recipe.training
        if result.tuned and t.contrastive.then == "head":
            if t.cache == "off":
                return None
            return self.prefix_cache(self.parts, len(self.parts.layers), list(splits_to_cache(self.encoded)))
        return self.modality.build_cache(self)

    def use_cache(self, cached) -> None:
        """Install a frozen-prefix cache (`textxfer.modalities.base.Cached`), or run without one (None)."""
        self.cache, self.features = (cached.cache, cached.features) if cached is not None else (None, None)
        if cached is not None:
            self.cache_key = cached.key
            cached.cache.install()

    def stage_context(self):
        """What the contrastive stage reads: the model and its parts, the training examples, the device."""
        from textxfer.engine.contrastive import StageContext

        return StageContext(self.recipe.training, self.labels, self.model, self.parts, self.applied,
                            self.encoded["train"], self.modality, self.acc, self.prefix_cache)

    def prefix_cache(self, parts, k: int, splits: list[str]):
        """The modality's in-memory cache of the embeddings + lower k layers of `parts` for these splits."""
        return self.modality.prefix_cache(self, parts, k, splits)

    @property
    def tokenizer(self):
        """The text modality's tokenizer (None for images)."""
        return getattr(self.modality, "tokenizer", None)

    @property
    def input_names(self) -> list[str]:
        return getattr(self.modality, "input_names", [])

    @property
    def transforms(self):
        """The image modality's transforms (None for text)."""
        return getattr(self.modality, "transforms", None)

    def adapt(self, model: torch.nn.Module, parts):
        """The recipe's strategy on the modality's classifier: pooling and re-initialised layers first
        (`prepare_model`), then what trains (`apply_strategy`). Returns (parts, applied)."""
        from textxfer.strategies import smalldata
        from textxfer.strategies.apply import apply_strategy

        r = self.recipe
        parts = smalldata.prepare_model(model, parts, r)  # model.pooling, strategy.reinit_layers
        return parts, apply_strategy(model, parts, r.strategy)

    def prepare(self) -> None:
        from textxfer.engine.distributed import check_enough_examples

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

        optimizer = torch.optim.AdamW(optimizer_groups(self), lr=t.learning_rate,  # + training.layer_lr_decay
                                      **fused_adamw(self.model))
        scheduler = linear_schedule(optimizer, int(t.warmup_ratio * self.total_steps), self.total_steps)
        sharding.set_wrapped_layers(self)  # FSDP: one unit per backbone layer (training.sharding)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(self.model, optimizer, scheduler)
        self.schedule = new_schedule(self.recipe, self.steps_per_epoch, self.acc.unwrap_model(self.model),  # gradual,
                                     self.parts, self.applied.frozen_prefix, n_proc)  # training.head_warmup_epochs
        # training.head_l2 is against the summed loss; our loss is the mean over the examples: divide by their number
        self.head_l2 = None
        if t.head_l2:
            matrices = head_weight_matrices(self.acc.unwrap_model(self.model), self.parts)
            self.head_l2 = functools.partial(add_head_l2, matrices, t.head_l2 / len(self.encoded["train"]))
            log.info(f"training.head_l2 {t.head_l2:g}: L2 penalty on {len(matrices)} head weight matrices "
                     f"({sum(m.numel() for m in matrices):,} weights)")
        self.eval_dls = {}
        self.reload_eval_loaders()
        weights = class_weight_tensor(t.class_weights, self.labels, self.encoded["train"].targets) \
            if not self.splits.multi_label else None
        self.class_weights = weights.to(self.acc.device) if weights is not None else None
        log_batch_plan(self, micro)

    def reload_eval_loaders(self) -> None:
        """Evaluation loaders of the validation and test splits as the model now reads them (through the cache
        where one is installed, else from the examples)."""
        for split in ("validation", "test"):
            if split in self.encoded:
                _, dl = self.loader(split, False, self.eval_batch_size())
                self.eval_dls[split] = self.acc.prepare(dl)

    def drop_cache(self) -> None:
        """Put the cached frozen modules back: from now on the whole model computes every split."""
        if self.cache is not None:
            self.cache.uninstall()
        self.cache, self.features = None, None

    def eval_batch_size(self) -> int:
        """Global batch size of the evaluation loaders: the training micro-batch, at least 64 per process."""
        t = self.recipe.training
        return max(t.batch_size // t.gradient_accumulation_steps, 64) * self.acc.num_processes

    def freeze_unused(self) -> None:
        """Freeze the trainable parameters the forward pass never uses (DDP needs a gradient for each)."""
        freeze_unused_parameters(self)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.modality.logits(self, batch)

    def loader(self, split: str, train: bool, batch_size: int):
        """(batch plan, DataLoader) over one split: the modality batches its own examples."""
        return self.modality.loader(self, split, train, batch_size)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The mean loss, or with reduction `none` one (class-weighted) value per example."""
        return classification_loss(logits, targets, self.splits.multi_label, self.class_weights, reduction)

    # -- the loop
    def fit(self) -> None:
        """Train until the planned steps are done or early stopping says stop, from where `progress` stands
        (zero, or a restored checkpoint). SIGINT/SIGTERM save a checkpoint at the end of the step, then exit."""
        t = self.recipe.training
        p = self.state.progress
        if t.early_stopping is not None and "validation" not in self.eval_dls:
            raise UserError("`training.early_stopping` watches the validation metrics, but this run has no validation "
                            "split: give `data.validation` or a `data.validation_split` above 0, or drop early stopping.")
        start_tracking(self)
        bar = ProgressReport("train", self.total_steps, "steps", initial=p.step, show=self.acc.is_main_process)
        with StopSignals() as signals:
            while p.step < self.total_steps and p.stopped_early is None:
                batches = self.epoch_batches(p.epoch)
                self.train_mode()
                for i in range(p.batch, len(batches)):
                    with self.schedule.gate(p.step) if self.schedule else contextlib.nullcontext():
                        p.running += self.train_step(batches[i].tolist())
                    p.seen += 1
                    p.step, p.batch = p.step + 1, i + 1
                    bar.update(1)
                    epoch_float = p.step / self.steps_per_epoch
                    end = p.batch == len(batches) or p.step >= self.total_steps
                    if p.step % t.log_every == 0 or p.step == self.total_steps:
                        log_train(self, epoch_float, bar)
                    evaluated = end or bool(t.eval_every and p.step % t.eval_every == 0)
                    if evaluated:
                        evaluate_and_track(self, p.step, epoch_float)
                        after_evaluation(self)
                    if p.batch == len(batches):
                        p.epoch, p.batch = p.epoch + 1, 0
                    saved = checkpoint.save(self) if checkpoint.checkpoint_due(self) else None
                    signum = signal_received(self, signals)
                    if signum:
                        interrupt(self, signum, saved)
                    if end or p.stopped_early is not None:
                        break
                    if evaluated:
                        self.train_mode()
        bar.close()

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of an epoch, as index arrays: a pure function of (seed, epoch), so resume can skip to
        any batch."""
        self.plan.set_epoch(epoch)
        return self.plan.batch_arrays()

    def train_mode(self) -> None:
        self.model.train()
        set_frozen_eval(self.acc.unwrap_model(self.model), self.parts, self.applied.frozen_prefix)

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, indices: list[int]) -> float:
        """One optimizer step on one global batch; returns this process's share of the batch's mean loss.

        The batch is cut the same way whatever the set-up: into accumulation x processes shards, each example's
        loss divided by the whole batch's weight. So 1 process x 2 accumulation steps and 2 processes x 1 add up
        the same gradient, and an uneven last batch needs no duplicated examples (a process left without one runs
        an example at weight 0)."""
        t = self.recipe.training
        accum, n_proc = t.gradient_accumulation_steps, self.acc.num_processes
        norm = batch_weight(indices, self.class_weights, self.encoded["train"].targets, self.splits.multi_label)
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

    # -- scoring (see `evaluation`)
    def predict_split(self, split: str, dl=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, targets, example indices) of a split (through `dl`, default its evaluation loader)."""
        return evaluation.predict_split(self, split, dl)

    def score(self, split: str) -> tuple[dict, dict, np.ndarray]:
        """(metrics incl. loss, per-class table, logits) of a split."""
        return evaluation.score(self, split)

    # -- results
    def finish(self) -> tuple[dict, dict]:
        """(results for metrics.json, logits per split) of the best model as it is saved, scored in fp32."""
        restore_best(self)
        whole = sharding.unshard(self)  # FSDP: scored and saved as a whole model
        if whole is not None:
            self.optimizer = self.scheduler = None
            self.model, self.parts, self.applied = whole
        self.train_seconds = time.time() - self.started
        end_tracking(self)
        last = self.state.last_validation
        if effective_mixed_precision(self.recipe.training.mixed_precision) != "no":
            score_in_full_precision(self)
            last = None
        with full_precision_forward(self.acc.unwrap_model(self.model)):
            results = final_scores(self, last)
        if self.cache is not None:
            self.cache.uninstall()
        return results
