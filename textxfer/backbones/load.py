"""Load a checkpoint and describe its parts: embeddings, the ordered encoder layers, and the head.

Freezing "the lower N", LoRA on the upper layers and the frozen-prefix cache all read the one ordered
list found here. Each family's names are the expected case; anything else is discovered from the model
(the longest `ModuleList` of layers under the base model) and refused clearly when nothing fits.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from textxfer.core.errors import UserError

SAFE_LOADING = {"use_safetensors": True, "use_kernels": False}
"""Keyword arguments of every `from_pretrained` that loads weights: safetensors only, and no Hub kernels.
transformers (5.x) otherwise swaps layers for kernels it downloads from the Hub when a model is put in train or
eval mode on a GPU: code fetched at run time (refused like `trust_remote_code`), a crash where the Hub cannot be
reached, and numbers that differ from the CPU's."""

# Extra modules that belong with the embeddings (they feed every layer, or project embeddings up).
EMBEDDING_EXTRAS = (
    "embeddings_project",  # ELECTRA small
    "encoder.embedding_hidden_mapping_in",  # ALBERT
    "encoder.rel_embeddings",  # DeBERTa-v2/v3 relative position embeddings
    "encoder.LayerNorm",  # DeBERTa-v2/v3: the norm of rel_embeddings
    "embedder",  # ResNet stem
    "conv_stem",  # MobileNetV2 stem
)
# Where each family keeps its ordered layers, relative to the base model (the expected case).
LAYER_LISTS = (
    "encoder.layer",  # BERT, MiniLM, RoBERTa, XLM-R, ELECTRA, DeBERTa
    "transformer.layer",  # DistilBERT
    "encoder.albert_layer_groups",  # ALBERT (shared)
    "layers",  # ViT (transformers 5)
    "encoder.layers",  # Swin
    "encoder.stages",  # ConvNeXt, ResNet
    "encoder.blocks",  # EfficientNet
    "layer",  # MobileNetV2
)
# LoRA targets per family: the attention and MLP linear layers inside an encoder layer.
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "camembert": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "albert": ["query", "key", "value", "dense", "ffn", "ffn_output"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "deberta": ["in_proj", "dense"],
    # ViT-style attention and MLP: transformers 5 names (q/k/v/o_proj, fc1/fc2), and the 4.x names
    "vit": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "query", "key", "value", "dense"],
    "deit": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "query", "key", "value", "dense"],
    "swin": ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "query", "key", "value", "dense"],
    # vision CNNs: peft adapts Conv2d too; only full (groups=1) convolutions, never the depthwise ones
    "convnext": ["pwconv1", "pwconv2"],
    "resnet": ["convolution"],
    "efficientnet": ["expand_conv", "project_conv"],
    "mobilenet_v2": ["expand_1x1.convolution", "reduce_1x1.convolution"],
}


@dataclass
class Parts:
    """Where a model keeps its parts, as module paths relative to the whole model."""

    embeddings: list[str]
    layers: list[str]
    shared_layers: bool = False
    """ALBERT: one set of layer weights applied `num_hidden_layers` times."""
    new_params: set[str] = field(default_factory=set)
    """Parameters that the checkpoint did not hold (initialised at load): always trained, always saved."""

    def group_of(self, param_name: str) -> str:
        """`embeddings`, `layer.{i}`, or `head` (classifier, pooler and anything after the last layer)."""
        for prefix in self.embeddings:
            if param_name.startswith(prefix + "."):
                return "embeddings"
        for i, prefix in enumerate(self.layers):
            if param_name.startswith(prefix + "."):
                return f"layer.{i}"
        return "head"

    def head_modules(self, model: nn.Module) -> list[str]:
        """Top-level modules of the head that are new at fine-tune time (LoRA `modules_to_save`)."""
        names = set()
        for name, _ in model.named_parameters():
            if self.group_of(name) == "head":
                top = name.split(".")[0]
                if top != getattr(model, "base_model_prefix", ""):
                    names.add(top)
                elif name in self.new_params:
                    names.add(name.rsplit(".", 1)[0])
        return sorted(names)


def resolve_package_path(ref: str) -> Path:
    """`package:module[/sub/path]` -> a folder inside an installed package (or what its get_model_path says)."""
    spec = ref.removeprefix("package:")
    module_name, _, sub = spec.partition("/")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise UserError(
            f"`{ref}` names the Python package `{module_name}`, which is not installed. "
            f"Install it (`pip install {pip_name}`) or point to a folder instead."
        ) from None
    if not sub and hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    base = Path(module.__file__).parent
    path = base / sub if sub else base
    if not path.exists():
        raise UserError(f"`{ref}`: {path} does not exist inside the installed package `{module_name}`.")
    return path


def resolve_model_name(name: str) -> str:
    if name.startswith("package:"):
        return str(resolve_package_path(name))
    if name.startswith("convert:"):  # a checkpoint converted from pip-installed weights, once, into the cache
        from textxfer.backbones.convert import converted_model_dir

        return str(converted_model_dir(name))
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_local:
        if not path.exists():
            raise UserError(
                f"Model folder {name} does not exist. Give an existing checkpoint folder (with config.json) "
                "or a Hub id such as `sentence-transformers/all-MiniLM-L6-v2`."
            )
        if not (path / "config.json").is_file():
            raise UserError(
                f"Model folder {name} has no config.json, so it is not a transformers checkpoint. Point "
                "`model.name` at the folder that holds config.json and the weights."
            )
        return str(path)
    return name


def load_config(name: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(
            f"Could not load the model config of `{name}`: {str(e).splitlines()[0]} Check the name, or use a "
            "local folder (this machine may have no access to the Hugging Face Hub)."
        ) from None
    except ValueError as e:
        raise UserError(f"`{name}` is not a checkpoint textxfer can load: {str(e).splitlines()[0]}") from None


def check_classifiable(config, name: str, task: str = "text") -> None:
    """Refuse, before anything heavy loads, a checkpoint that has no classification model for the task."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    auto = AutoModelForImageClassification if task == "image" else AutoModelForSequenceClassification
    if type(config) not in auto._model_mapping:
        kind, examples = (("image", "ViT, ConvNeXt, ResNet, EfficientNet, ...") if task == "image"
                          else ("sequence", "BERT, RoBERTa, DeBERTa, ..."))
        raise UserError(
            f"`{name}` is a `{config.model_type}` checkpoint, which has no {kind}-classification model in "
            f"transformers. Pick a checkpoint of a family that has one ({examples})."
        )


def load_classifier(name: str, labels: list[str], *, multi_label: bool = False, task: str = "text",
                    revision: str | None = None, trust_remote_code: bool = False,
                    dropout: float | None = None) -> tuple[nn.Module, Parts]:
    """Load a checkpoint with a classification head for `labels`; report which parameters are new."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    auto = AutoModelForImageClassification if task == "image" else AutoModelForSequenceClassification
    config = load_config(name, revision, trust_remote_code)
    id2label = dict(enumerate(labels))
    config.num_labels = len(labels)
    config.id2label = id2label
    config.label2id = {v: k for k, v in id2label.items()}
    config.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                    "classifier_dropout", "seq_classif_dropout", "hidden_dropout"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    check_classifiable(config, name, task)
    try:
        with transformers_errors_only():  # textxfer reports new parameters itself, in one line
            model, info = auto.from_pretrained(
                name, config=config, revision=revision, trust_remote_code=trust_remote_code,
                ignore_mismatched_sizes=True, output_loading_info=True, **SAFE_LOADING,
            )
    except OSError as e:
        raise UserError(f"Could not load the weights of `{name}`: {str(e).splitlines()[0]}") from None
    new = set(info.get("missing_keys", [])) | {m[0] if isinstance(m, tuple) else m
                                               for m in info.get("mismatched_keys", [])}
    parts = describe(model)
    parts.new_params = {n for n, _ in model.named_parameters() if n in new}
    return model, parts


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Inside the block transformers logs errors only; its verbosity before is restored afterwards (a library
    leaves its host's logging as it found it)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _module_exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def describe(model: nn.Module) -> Parts:
    """Find the embeddings and the ordered layer list of a (sequence or image) classification model."""
    prefix = getattr(model, "base_model_prefix", "")
    base = prefix if prefix and _module_exists(model, prefix) else ""
    join = (lambda p: f"{base}.{p}") if base else (lambda p: p)

    layers_path = next((join(p) for p in LAYER_LISTS
                        if _module_exists(model, join(p))
                        and isinstance(model.get_submodule(join(p)), nn.ModuleList)), None)
    if layers_path is None:  # generic fallback: the longest list of parameterised modules under the base
        candidates = [(n, m) for n, m in model.named_modules()
                      if isinstance(m, nn.ModuleList) and len(m) > 1 and n.startswith(base)
                      and all(any(True for _ in c.parameters()) for c in m)]
        if candidates:
            layers_path = max(candidates, key=lambda nm: (len(nm[1]), -nm[0].count(".")))[0]
    if layers_path is None:
        raise UserError(
            f"textxfer cannot find the encoder layers of this `{type(model).__name__}` (no list of layers "
            "under its base model). Use strategy `full` or `head`-less training, or open an issue naming the "
            "architecture."
        )
    layer_list = model.get_submodule(layers_path)
    layers = [f"{layers_path}.{i}" for i in range(len(layer_list))]
    shared = layers_path.endswith("albert_layer_groups")

    embeddings = [join(p) for p in ("embeddings",) + EMBEDDING_EXTRAS if _module_exists(model, join(p))]
    if not embeddings:
        raise UserError(f"textxfer cannot find the embeddings of this `{type(model).__name__}`.")
    return Parts(embeddings=embeddings, layers=layers, shared_layers=shared)


def lora_target_regex(model: nn.Module, parts: Parts, names: list[str] | None,
                      layers: int | None) -> tuple[str, int]:
    """A regex that matches the LoRA target linears inside the chosen (upper) layers only; and how many."""
    model_type = getattr(model.config, "model_type", "")
    names = names or LORA_TARGETS.get(model_type)
    if not names:
        raise UserError(
            f"No default LoRA targets for model type `{model_type}`. Set `strategy.lora.target_modules` to "
            "the names of its linear layers (see `textxfer info MODEL`)."
        )
    chosen = parts.layers if layers is None else parts.layers[len(parts.layers) - layers:]
    if layers is not None and not 0 < layers <= len(parts.layers):
        raise UserError(
            f"`strategy.lora_layers` is {layers}, but the model has {len(parts.layers)} layer groups: pick 1.."
            f"{len(parts.layers)} or null for all."
        )
    layer_re = "|".join(re.escape(p) for p in chosen)
    regex = rf"^(?:{layer_re})\..*\b(?:{'|'.join(re.escape(n) for n in names)})$"
    matched = [n for n, m in model.named_modules()
               if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)) and re.match(regex, n)]
    if not matched:
        raise UserError(
            f"LoRA targets {names} match no linear layer inside the chosen layers of this `{model_type}` "
            "model. Check `strategy.lora.target_modules` against `textxfer info MODEL`."
        )
    return regex, len(matched)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model itself, under a PEFT wrapper if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The text inputs this model's forward accepts (DistilBERT takes no token_type_ids)."""
    import inspect

    root = unwrap_peft(model)
    params = inspect.signature(root.forward).parameters
    return tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in params)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting shared tensors once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen[id(p)] = p
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def group_sizes(model: nn.Module, parts: Parts) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, p in model.named_parameters():
        g = parts.group_of(name)
        sizes[g] = sizes.get(g, 0) + p.numel()
    return sizes
