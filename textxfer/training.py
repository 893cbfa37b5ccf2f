"""The training run, top to bottom: recipe -> data -> backbone -> strategy -> Accelerate loop -> artifacts.

A plain loop a reader can follow: seed, build, then for each epoch take length-grouped batches, step AdamW
with warm-up/decay, evaluate, keep the best trainable weights; finally evaluate the test split and save a
folder that plain `transformers` loads.
"""

from __future__ import annotations

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

from textxfer.batching import BatchPlan, Collator, Encoded, encode, sorted_batches
from textxfer.errors import UserError
from textxfer.recipe import Recipe, load_recipe, save_recipe, to_dict

log = logging.getLogger("textxfer")


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict


# ------------------------------------------------------------------------------------------------ set-up

def physical_cores() -> int:
    n = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo") as f:
            cores = {line.split(":")[1].strip() for line in f if line.startswith("core id")}
        return max(1, len(cores)) if cores else n
    except OSError:
        return n


def setup_logging(output_dir: Path | None, is_main: bool, append: bool = False) -> None:
    """Progress on stderr (main process only; the others report warnings) and in RUN_DIR/train.log (appended to
    when a run resumes)."""
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


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    run_json = path / "run.json"
    if run_json.is_file():
        try:
            finished = json.loads(run_json.read_text()).get("finished", False)
        except (OSError, json.JSONDecodeError):
            finished = False
        if finished and not overwrite:
            raise UserError(
                f"Output directory {path} already holds a finished run. Pick another `--output-dir`, or pass "
                "`--overwrite` to replace it."
            )


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

    # Gradient accumulation is done by Loop.train_step (with no_sync), not by Accelerate: every global batch is
    # cut into accumulation x processes shards there, so results do not depend on how it is cut.
    acc = Accelerator(
        mixed_precision=t.mixed_precision, cpu=use_cpu,
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        **tracker_kwargs(t.log_with, Path(recipe.output_dir)),
    )
    check_process_count(acc)
    return acc


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
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("base_model.model.")
        is_head = parts.group_of(clean) == "head" and not clean.startswith(
            getattr(model, "base_model_prefix", "\0") + ".")
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((is_head, no_decay), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr": head_lr if (is_head and head_lr) else lr})
    return out


def set_frozen_eval(model: torch.nn.Module, parts, frozen_prefix: int) -> None:
    """Frozen parts run in eval mode (no dropout), as users expect of 'frozen' and as the cache needs."""
    if frozen_prefix < 0:
        return
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in parts.embeddings + parts.layers[:frozen_prefix]:
        root.get_submodule(path).eval()
    # A BatchNorm with frozen weights (a CNN's last norm under `head`, every norm under `lora`) keeps its running
    # statistics: in train mode it would normalise by batch statistics and overwrite them.
    for module in root.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


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

    # -- data and model
    def build(self) -> None:
        from accelerate.utils import set_seed

        from textxfer.backbones import input_names, load_classifier, resolve_model_name
        from textxfer.data import load_splits
        from textxfer.strategies import apply_strategy

        r = self.recipe
        threads = r.training.threads or default_threads()
        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.acc = make_accelerator(r)
        setup_logging(self.out, self.acc.is_main_process, append=self.resume_from is not None)
        set_seed(r.training.seed)
        from textxfer import vision

        self.task = vision.task_of(r)
        if self.task == "image":  # image files, the image processor and pixel batches; the same strategies
            vision.build(self)
            return
        self.splits = load_splits(r.data, r.training.seed)
        for note in self.splits.notes:
            log.info(note)
        self.labels = self.splits.labels
        if len(self.labels) < 2:
            raise UserError(f"The training data has only one label ({self.labels}); a classifier needs two or more.")
        self.model_path = resolve_model_name(r.model.name)
        self.tokenizer = build_tokenizer(self.model_path, r)
        set_seed(r.training.seed)  # seeded right before the model is built: the new head is reproducible
        model, self.parts = load_classifier(
            self.model_path, self.labels, multi_label=self.splits.multi_label, revision=r.model.revision,
            trust_remote_code=r.model.trust_remote_code, dropout=r.model.dropout)
        self.applied = apply_strategy(model, self.parts, r.strategy)
        self.model = self.applied.model
        self.input_names = input_names(self.model)
        log.info(f"model {r.model.name}: {len(self.parts.layers)} layer groups; strategy {r.strategy.name}; "
                 + self.applied.summary())
        self.encoded: dict[str, Encoded] = {}
        for name, ds in self.splits.items():
            targets = list(ds["labels"] if self.splits.multi_label else ds["label"])
            pairs = list(ds["text_pair"]) if "text_pair" in ds.column_names else None
            self.encoded[name] = encode(self.tokenizer, list(ds["text"]), pairs, targets, r.model.max_length)
            enc = self.encoded[name]
            log.info(f"{name}: {len(enc)} examples, {enc.truncated} ({100 * enc.truncated / len(enc):.1f}%) "
                     f"truncated at {r.model.max_length} tokens")
        self.features = self.build_cache()

    def build_cache(self) -> dict[str, list] | None:
        """Frozen-prefix outputs of every split, computed once (or read from disk); None where not exact."""
        from textxfer.features import FrozenPrefixCache, why_not

        r = self.recipe
        self.cache = None
        if r.training.cache == "off":
            return None
        root = self.model.get_base_model() if self.applied.is_peft else self.model
        reason = why_not(root, self.parts, self.applied.frozen_prefix)
        if reason:
            log.info(f"frozen-prefix cache: not used ({reason})")
            return None
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.training.mixed_precision)
        cache = FrozenPrefixCache(root, self.parts, self.applied.frozen_prefix, dtypes[r.training.cache_dtype],
                                  autocast)
        device = self.acc.device
        root.to(device)
        weights_key = cache.frozen_hash()
        self.cache_key = weights_key  # a resumed run must find the same frozen part (checkpoint.restore)
        started = time.time()
        features = {}
        for split, enc in self.encoded.items():
            key = hashlib.sha256(f"{weights_key}|{cache.data_hash(enc)}".encode()).hexdigest()[:32]
            collate = Collator(enc, self.tokenizer.pad_token_id)

            def batches(enc=enc, collate=collate):
                for idx in sorted_batches(enc.lengths, 64):
                    b = collate(idx)
                    yield idx, {k: b[k] for k in self.input_names if k in b}
            features[split] = cache.load_or_compute(key, batches, device, use_disk=r.training.cache == "auto")
        log.info(f"frozen-prefix cache: embeddings + {self.applied.frozen_prefix} layers computed once for "
                 f"{sum(len(f) for f in features.values())} examples in {time.time() - started:.1f}s; "
                 "training runs only the layers above")
        cache.install()
        self.cache = cache
        return features

    def loader(self, split: str, train: bool, batch_size: int):
        if getattr(self, "task", "text") == "image":
            from textxfer import vision

            return vision.loader(self, split, train, batch_size)
        r = self.recipe
        enc = self.encoded[split]
        plan = BatchPlan(enc.lengths, batch_size, seed=r.training.seed, shuffle=train,
                         group_by_length=r.training.group_by_length)
        features = self.features.get(split) if self.features else None
        dl = torch.utils.data.DataLoader(range(len(enc)), batch_sampler=plan,
                                         collate_fn=Collator(enc, self.tokenizer.pad_token_id, with_index=True,
                                                             features=features),
                                         num_workers=r.training.num_workers)
        return plan, dl

    def prepare(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        t = self.recipe.training
        micro = t.batch_size // t.gradient_accumulation_steps
        if micro % self.acc.num_processes:
            raise UserError(
                f"`training.batch_size` {t.batch_size} / accumulation {t.gradient_accumulation_steps} = {micro} "
                f"cannot be split over {self.acc.num_processes} processes; make it a multiple of that."
            )
        self.plan, train_dl = self.loader("train", True, micro)
        self.steps_per_epoch = math.ceil(len(self.plan) / t.gradient_accumulation_steps)
        self.total_steps = max(1, math.ceil(self.steps_per_epoch * t.epochs))
        optimizer = torch.optim.AdamW(
            param_groups(self.model, self.parts, t.learning_rate, t.head_learning_rate, t.weight_decay),
            lr=t.learning_rate)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        self.model, self.optimizer, self.train_dl, self.scheduler = self.acc.prepare(
            self.model, optimizer, train_dl, scheduler)
        self.eval_dls = {}
        for split in ("validation", "test"):
            if split in self.encoded:
                _, dl = self.loader(split, False, max(micro, 64) * self.acc.num_processes)
                self.eval_dls[split] = self.acc.prepare(dl)
        weights = class_weight_tensor(t.class_weights, self.labels, self.encoded["train"].targets) \
            if not self.splits.multi_label else None
        self.class_weights = weights.to(self.acc.device) if weights is not None else None
        log.info(f"batch: {t.batch_size} global = {micro // self.acc.num_processes} per device x "
                 f"{self.acc.num_processes} processes x {t.gradient_accumulation_steps} accumulation; "
                 f"{self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all")

    def logits(self, batch: dict) -> torch.Tensor:
        if getattr(self, "task", "text") == "image":
            from textxfer import vision

            return vision.logits(self, batch)
        inputs = {k: batch[k] for k in self.input_names if k in batch}
        if self.cache is not None:
            self.cache.slot.current = batch["prefix"].to(self.acc.device, torch.float32)
        return self.model(**inputs).logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.splits.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        return torch.nn.functional.cross_entropy(logits, targets, weight=self.class_weights)

    # -- the loop
    def fit(self) -> None:
        from tqdm.auto import tqdm

        t = self.recipe.training
        self.best: dict | None = None
        self.best_state: dict | None = None
        step, epoch_float = 0, 0.0
        bar = tqdm(total=self.total_steps, desc="train", leave=False,
                   disable=not (self.acc.is_main_process and sys.stderr.isatty()))
        running, seen = 0.0, 0
        epoch = 0
        while step < self.total_steps:
            self.plan.set_epoch(epoch)
            self.model.train()
            set_frozen_eval(self.acc.unwrap_model(self.model), self.parts, self.applied.frozen_prefix)
            for batch in self.train_dl:
                with self.acc.accumulate(self.model):
                    loss = self.loss(self.logits(batch), batch["targets"])
                    self.acc.backward(loss)
                    if self.acc.sync_gradients and t.max_grad_norm:
                        self.acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                running += loss.detach().float().item()
                seen += 1
                if not self.acc.sync_gradients:
                    continue
                step += 1
                epoch_float = step / self.steps_per_epoch
                bar.update(1)
                if step % t.log_every == 0 or step == self.total_steps:
                    mean = running / max(seen, 1)
                    self.history["train"].append({"step": step, "epoch": round(epoch_float, 4), "loss": mean,
                                                  "learning_rate": self.scheduler.get_last_lr()[0]})
                    bar.set_postfix(loss=f"{mean:.4f}")
                    running, seen = 0.0, 0
                if t.eval_every and step % t.eval_every == 0 and step < self.total_steps:
                    self.evaluate_and_track(step, epoch_float)
                if step >= self.total_steps:
                    break
            epoch += 1
            self.evaluate_and_track(step, epoch_float)
        bar.close()

    @torch.inference_mode()
    def predict_split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, targets, example indices) of a split, gathered over processes without duplicates."""
        self.model.eval()
        outs, targets, index = [], [], []
        for batch in self.eval_dls[split]:
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
        metrics, per_class = classification_metrics(logits.argmax(-1), targets, self.labels)
        metrics["loss"] = loss
        return metrics, per_class, logits

    def evaluate_and_track(self, step: int, epoch: float) -> None:
        if "validation" not in self.eval_dls:
            return
        metrics, per_class, _ = self.score("validation")
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
            model = self.acc.unwrap_model(self.model)
            self.best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        log.info(f"epoch {epoch:.2f} step {step}: " + ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("loss", "accuracy", "macro_f1") if k in metrics)
            + (" (best)" if better else ""))

    def restore_best(self) -> None:
        if self.best_state is None:
            return
        model = self.acc.unwrap_model(self.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.best_state.items():
                params[k].copy_(v)

    # -- results
    def finish(self) -> dict:
        from textxfer import artifacts

        self.restore_best()
        self.train_seconds = time.time() - self.started
        results: dict = {"best_metric": self.recipe.training.metric, "num_processes": self.acc.num_processes}
        if self.best is not None:
            results["best"] = {k: v for k, v in self.best.items() if k != "split"}
        predictions = {}
        per_class_all = {}
        for split in self.eval_dls:
            metrics, per_class, logits = self.score(split)
            results[split] = metrics
            per_class_all[split] = per_class
            predictions[split] = logits
        results["per_class"] = per_class_all
        if self.cache is not None:
            self.cache.uninstall()
        if self.acc.is_main_process:
            artifacts.write_run(self, results, predictions)
        self.acc.wait_for_everyone()
        return results


def train(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None, output_dir: str | Path | None = None,
          overwrite: bool = False, command: str | None = None) -> RunResult:
    """Train as the recipe says and write the run directory. Python twin of `textxfer train`."""
    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides)
    elif isinstance(recipe, dict):
        recipe = load_recipe(data=recipe, overrides=overrides)
    elif overrides:
        recipe = load_recipe(data=to_dict(recipe), overrides=overrides)
    if output_dir is not None:
        recipe.output_dir = str(output_dir)
    out = Path(recipe.output_dir)
    prepare_output_dir(out, overwrite)
    loop = Loop(recipe, out, command)
    loop.build()
    if loop.acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out / "recipe.yaml")
    loop.prepare()
    loop.fit()
    metrics = loop.finish()
    return RunResult(out, metrics)
