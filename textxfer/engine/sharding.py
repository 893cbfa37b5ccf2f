"""Sharded training of large backbones: FSDP2 through Accelerate's plugin, or DeepSpeed ZeRO 1/2 where installed.

`training.sharding: fsdp` (or an `--accelerate-config` file whose `distributed_type` is FSDP) shards the weights,
gradients and optimizer state of a `full` or `lora` run over its processes, one unit per backbone layer.
`deepspeed` shards the optimizer state (ZeRO-1) and gradients (ZeRO-2) and keeps the weights whole on every
process. What differs from DDP for the rest of the engine lives here:

- which plugin the Accelerator gets, and a refusal when Accelerate would not shard as asked: it runs FSDP and
  DeepSpeed only on GPUs (on a CPU-only machine it falls back to DDP without a word), and only in a run of
  several processes;
- the layer class FSDP wraps, found from the model;
- the best weights kept aside during training: each process keeps its own shard;
- at the end, a whole (unsharded) model on every process, which is scored and saved as a plain one.

Checkpoints of sharded runs go through `Accelerator.save_state`/`load_state` (`checkpoint`, `resuming`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator

import torch

from textxfer.config.schema import Recipe
from textxfer.core.errors import UserError

log = logging.getLogger("textxfer")

SHARDED_TYPES = ("FSDP", "DEEPSPEED")
"""Accelerate's distributed types whose processes each hold only part of the training state."""


def launch_sharding() -> str | None:
    """The sharding the launch's Accelerate config asked for (`accelerate launch --config_file` passes the file's
    `distributed_type` on in these variables): "fsdp", "deepspeed" or None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return None


@contextlib.contextmanager
def launch_environment_kept() -> Iterator[None]:
    """Put the launch's ACCELERATE_USE_FSDP/DEEPSPEED back as they were after the block: `Accelerator` sets them
    when given a plugin, and the next run in this process (a notebook, `compare`) would read them as the
    launch's Accelerate config asking for sharding."""
    names = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    before = {n: os.environ.get(n) for n in names}
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def asked_sharding(recipe: Recipe) -> str | None:
    """The sharding this run asks for, from the recipe or the Accelerate config; a UserError when they disagree."""
    mine, launch = recipe.training.sharding, launch_sharding()
    if mine and launch and mine != launch:
        raise UserError(
            f"The recipe asks for `training.sharding: {mine}`, but the Accelerate config this run was launched with "
            f"sets up {launch.upper()}. Make them agree: set `training.sharding: {launch}` (or null: the config "
            f"decides), or launch with a config for {mine}."
        )
    return mine or launch


def accelerator_plugins(recipe: Recipe) -> dict:
    """Keyword arguments of `Accelerator` for the recipe's `training.sharding` ({} for none, or when the launch's
    Accelerate config sets the sharding up: Accelerate then builds the plugin from the config, which stands)."""
    kind = asked_sharding(recipe)
    if kind == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise UserError(
            "`training.sharding: deepspeed` (or the Accelerate config) needs the deepspeed package, which is not "
            "installed. Install it (`pip install deepspeed`, on a machine with GPUs and a CUDA toolkit), or use "
            "`training.sharding: fsdp`, which needs nothing beyond PyTorch."
        )
    if kind is None or launch_sharding() is not None:
        return {}
    o = recipe.training.sharding_options
    if kind == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        return {"fsdp_plugin": FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=o.reshard_after_forward, cpu_offload=o.cpu_offload,
            auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=o.wrap,
            state_dict_type="SHARDED_STATE_DICT")}
    from accelerate.utils import DeepSpeedPlugin

    t = recipe.training
    return {"deepspeed_plugin": DeepSpeedPlugin(
        zero_stage=o.zero_stage, gradient_accumulation_steps=1, gradient_clipping=t.max_grad_norm or 0.0,
        offload_optimizer_device="cpu" if o.cpu_offload else "none")}


def check_sharding(acc, recipe: Recipe) -> None:
    """Stop unless Accelerate shards as the recipe or config asked (it ignores an FSDP or DeepSpeed plugin on a
    machine without GPUs and in a single process, and would train unsharded), with settings textxfer trains
    correctly under."""
    kind = asked_sharding(recipe)
    got = acc.distributed_type.value
    if kind is not None and got != kind.upper():
        if not torch.cuda.is_available():
            why = (f"Accelerate shards with {kind.upper()} on GPUs only; on this machine, which has none, it would "
                   f"train unsharded ({got}). Set `training.sharding: null` here (plain DDP over gloo), and shard "
                   "on a GPU machine")
        elif acc.num_processes < 2:
            why = ("sharding splits the model over several processes, and this run has one. Start one process per "
                   "GPU: `textxfer train RECIPE --num-processes N`")
        else:
            why = f"Accelerate set up {got} instead. Launch through `textxfer train --num-processes N`"
        source = "the recipe's `training.sharding`" if recipe.training.sharding else "the Accelerate config"
        raise UserError(f"{kind.upper()} sharding was asked for ({source}), but {why}.")
    if got == "FSDP" and acc.state.fsdp_plugin.fsdp_version != 2:
        raise UserError(
            f"The Accelerate config asks for FSDP version {acc.state.fsdp_plugin.fsdp_version}; textxfer shards with "
            "FSDP2. Set `fsdp_version: 2` in the config's `fsdp_config` (or leave FSDP to the recipe: "
            "`training.sharding: fsdp`)."
        )
    if got == "DEEPSPEED":
        ds = acc.state.deepspeed_plugin
        if ds.zero_stage not in (1, 2):
            raise UserError(
                f"The Accelerate config asks for DeepSpeed ZeRO stage {ds.zero_stage}; textxfer trains with stages 1 "
                "and 2, which keep the weights whole on every process. To shard the weights too, use FSDP "
                "(`training.sharding: fsdp`)."
            )
        if ds.deepspeed_config.get("gradient_accumulation_steps", 1) not in (1, "auto"):
            raise UserError("The Accelerate config's DeepSpeed `gradient_accumulation_steps` must be 1: textxfer "
                            "accumulates itself (`training.gradient_accumulation_steps`, 1 under DeepSpeed).")


def is_sharded(acc) -> bool:
    """Whether each process holds only part of the training state (FSDP, DeepSpeed)."""
    return acc.distributed_type.value in SHARDED_TYPES


def is_fsdp(acc) -> bool:
    """Whether the weights themselves are sharded (FSDP): each process holds a shard of every parameter."""
    return acc.distributed_type.value == "FSDP"


def set_wrapped_layers(loop) -> None:
    """Tell FSDP which modules to shard as one unit each: those the recipe or config names, else the backbone's
    layer class; checked against the model so that a wrong name is named, not a failure inside Accelerate."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if not is_fsdp(loop.acc):
        return
    plugin = loop.acc.state.fsdp_plugin
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is transformer_auto_wrap_policy:
        names = plugin.transformer_cls_names_to_wrap or [layer_class(loop.model, loop.parts.layers[0])]
        classes = {type(m).__name__ for m in loop.model.modules()}
        absent = [n for n in names if n not in classes]
        if absent:
            found = sorted(c for c in classes if "Layer" in c)
            raise UserError(f"`training.sharding_options.wrap` (or the config's transformer_layer_cls_to_wrap) names "
                            f"{absent}, which this model does not have. Its layer classes: {found}; or leave it null "
                            "for the backbone's layer class.")
        plugin.transformer_cls_names_to_wrap = names
        units = f"one unit per {', '.join(names)}"
    else:
        units = "units as the Accelerate config's auto_wrap_policy says"
    from torch.distributed.fsdp import CPUOffloadPolicy

    log.info(f"sharding: FSDP2 over {loop.acc.num_processes} processes, {units}; reshard after forward: "
             f"{plugin.reshard_after_forward}; CPU offload: {isinstance(plugin.cpu_offload, CPUOffloadPolicy)}")


def layer_class(model: torch.nn.Module, path: str) -> str:
    """The class name of the backbone layer at `path` (relative to the model as loaded; a LoRA model nests it)."""
    for name, module in model.named_modules():
        if name == path or name.endswith("." + path):
            return type(module).__name__
    raise RuntimeError(f"no module {path} in {type(model).__name__}")


def reshard(model: torch.nn.Module) -> None:
    """Put every FSDP unit of `model` back in its sharded state. FSDP2 leaves the root unit's weights gathered
    after a forward pass without backward (an evaluation), and `named_parameters` then gives those whole while
    the layers' are shards; reading or writing the weights needs one state."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter: its shard under FSDP2 (a DTensor), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def unshard(loop):
    """A whole model on every process with the trained weights, as (model, parts, applied), for the loop to use in
    place of the sharded one (None where the run is not sharded); the sharded training state is freed. The final
    scores and the saved model are then those of a plain model, as without sharding.

    Every process must call it (the weights are gathered from all). The whole model is rebuilt as the run built
    it (modality, strategy) and loaded with the gathered weights, so a LoRA run saves as one does without."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_fsdp(loop.acc):
        return None
    loop.drop_cache()  # installed on the sharded model's modules
    # every process gathers every parameter whole (cpu_offload would gather on process 0 alone)
    full = get_model_state_dict(loop.model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    model, parts = loop.modality.load_model(loop.recipe, loop.model_path, loop.splits)
    parts, applied = loop.adapt(model, parts)
    missing, unexpected = applied.model.load_state_dict(full, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"rebuilding the whole model after sharded training: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    loop.acc.free_memory()  # the sharded model, optimizer and schedule Accelerate holds
    log.info("sharding: gathered the whole model on every process for the final scores and the saved model")
    return applied.model.to(loop.acc.device), parts, applied

