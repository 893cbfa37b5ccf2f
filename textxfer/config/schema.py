"""The recipe schema: every key a recipe can hold, its type, its default and what it does, declared where it
is documented. `textxfer.config.reading` reads YAML into these classes; `validate` checks what types cannot say."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    name: str = ""
    """Checkpoint: a local folder, a Hub id, or `package:<python_module>` for a checkpoint shipped in a package."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    trust_remote_code: bool = False
    """Run code from the checkpoint's repository. Off unless you trust its authors."""
    max_length: int = 128
    """Tokens per example after truncation. Longer keeps more text, costs time and memory quadratically."""
    dropout: float | None = None
    """Override the checkpoint's hidden/attention dropout (null keeps it). 0 makes training deterministic-friendly."""
    image_size: int | None = None
    """Images: resize and centre-crop to this square size instead of the checkpoint processor's (e.g. 96 instead
    of 224: about 5x less compute, enough for small pictures such as 8x8 digits). Convolutional backbones take any
    size, ViT-style ones only their own. The saved image processor carries it, so `pipeline()` matches training."""
    task: Literal["auto", "text", "image"] = "auto"
    """`text` (sequence classification: tokenizer, text columns) or `image` (image classification: image
    processor, image files). `auto` takes `image` for checkpoints that only have an image-classification model
    (ViT, DeiT, ConvNeXt, ResNet, EfficientNet, MobileNetV2, Swin, `convert:efficientnet-lite0`)."""
    pooling: Literal["cls", "mean"] = "cls"
    """What the classifier reads: `cls`, the first token's state (what the checkpoint's own head does); or `mean`,
    the average of all token states (sentence-transformers checkpoints are trained for it; usually better with
    few examples). `mean` appends one fixed averaging layer to the encoder (uniform attention, no trained weights)
    so the saved model still loads in plain transformers and predicts exactly what was evaluated; it costs one
    more layer at inference. Not for ALBERT."""


@dataclass
class DataConfig:
    train: Any = None
    """Training data: a file, a folder of class folders of .txt files, `hub:<dataset id>[:split]`,
    `package:<module>/<path>`, or {label: file or folder} for one source per class."""
    validation: Any = None
    """Validation data (same forms as train). If absent, `validation_split` of train is carved out (stratified)."""
    test: Any = None
    """Test data, evaluated once with the best model. If absent, `test_split` of train is carved out (0 = none)."""
    unlabelled: Any = None
    """Texts without labels to learn from (self-training, see `self_training` and docs/self-training.md): a file in
    the training data's format and columns (a label column is ignored), or a .txt file of one text per line.
    Texts that are also training, validation or test texts are removed (counted in the run's report)."""
    unlabelled_text_column: int | str | None = None
    """The text column of `data.unlabelled` when it is not `text_column` (a name, or a 0-based index); null: the
    training file's `text_column`."""
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "text", "prefix"] = "auto"
    """File format; `auto` goes by the extension (.csv .tsv .json .jsonl .parquet .txt). `prefix` reads lines
    `LABEL<sep>text` (see label_separator); `text` is one example per line (label from {label: file}, or sniffed
    as prefix when every line starts with one)."""
    text_column: int | str = "text"
    """Column with the text (a name, or a 0-based index for files without a header)."""
    text_pair_column: int | str | None = None
    """Second text column for sentence-pair tasks; the tokenizer joins the pair."""
    label_column: int | str = "label"
    """Column with the label (name or 0-based index)."""
    labels: Any = None
    """Fix the label order: a list of names, a file of names (one per line, or a JSON list), or a mapping
    {raw value: name} (several raw values may share a name). Integer raw labels with a list of names are read as
    indices into it (GoEmotions style). Default: the sorted label values of train (or a Hub dataset's names)."""
    label_level: Literal["full", "coarse"] = "full"
    """For hierarchical labels `COARSE:fine` (TREC): `coarse` keeps the part before the first `:` (6 classes
    instead of 50: more examples per class, less detail)."""
    label_pattern: str | None = None
    """A regular expression that extracts the label from each raw label value (its group `label`, else its first
    group, else the whole match), e.g. `^([A-Z]+):` for TREC's coarse class. Rows it does not match are errors."""
    header: bool | None = None
    """Whether delimited files have a header row; null: yes when columns are named, sniffed when they are numbers."""
    delimiter: str | None = None
    """Field delimiter of delimited files (`\\t` or `tab` for a tab); null: tab for .tsv, sniffed for .csv (`,` unless
    every sampled line agrees on `;`, `|` or tab)."""
    quoting: Literal["auto", "quotes", "none"] = "auto"
    """`quotes`: fields may be wrapped in double quotes (standard CSV); `none`: quote characters are text (GLUE
    TSVs, tweets). `auto`: quotes, except for tab-delimited files whose first lines show no CSV writer's quoting
    (a quoted field with doubled quotes, a tab or a line break inside)."""
    label_separator: str | None = None
    """For `prefix` text files: what ends the label (`\\t`/`tab`, `space`, `:`...). null: a tab when every line has
    one, a space when every line starts with `WORD:word` (TREC)."""
    encoding: str = "utf-8"
    """File encoding. A file that is not valid UTF-8 falls back to Latin-1, reported as a note and a warning."""
    hub_config: str | None = None
    """Configuration name of a Hub dataset (`load_dataset(id, name=...)`)."""
    hub_revision: str | None = None
    """Hub dataset revision (branch, tag or commit) to load; pin it for reproducible runs."""
    validation_split: float = 0.1
    """Share of train carved out for validation when no validation data is given (stratified, seeded). Larger
    gives steadier model selection and leaves fewer examples to train on."""
    test_split: float = 0.0
    """Share of train carved out for test when no test data is given (stratified, seeded; 0 = no test split).
    Shares are of the training data as read: 0.1 + 0.2 leaves 70% to train."""
    max_train_examples: int | None = None
    """Keep at most this many training examples (stratified by class, seeded). Faster runs, lower accuracy."""
    examples_per_class: int | None = None
    """Few-shot: keep exactly this many training examples per class (seeded); an error if a class has fewer.
    Drawn after `validation_split` is carved from the whole file: that split stays its share of the file, not of
    the few shots (set it to 0 for a strictly few-shot run, as `fewshot.yaml` does)."""
    dedupe: bool = False
    """Drop repeated texts within train (first kept), then train texts that also occur in validation/test
    (leakage). Without it, duplicates and overlap are only reported."""
    multi_label: bool = False
    """Each example has a set of labels (sigmoid/BCE) instead of exactly one (softmax/cross-entropy). Labels may be
    lists (JSON/Parquet), delimited strings (`label_delimiter`) or index lists into `labels` (GoEmotions)."""
    label_delimiter: str = ","
    """For multi-label data given as a delimited string: what separates the labels."""
    skip_bad_rows: bool = False
    """Skip rows with a missing text or label (a warning names them) instead of stopping with an error."""
    image_column: int | str = "image"
    """Images: the column of a CSV/JSONL/Parquet file holding image paths (relative to that file's folder, or
    absolute), or the image column of a Hub dataset."""
    skip_bad_images: bool = False
    """Images: skip files that are missing, unreadable or not images (a warning names each) instead of stopping
    with an error that names the first. Readable placeholders (an 'image not found' GIF) are images: use
    `exclude_images` for those."""
    exclude_images: list[str] | None = None
    """Images: glob patterns of files to leave out, matched against the path relative to the split's folder (or
    as written in the path column); a pattern without `/` matches the file name. E.g. `[ants/imageNotFound.gif]`."""
    augment: bool | None = None
    """Images: random resized crop + horizontal flip of training images (evaluation always uses the processor's
    resize/crop). null: on, except when the frozen-prefix cache serves the frozen part (cached features are
    computed once per image, so they cannot be re-augmented each epoch); true forces it on and turns the cache
    off (slower, often more accurate when a few thousand images train several layers); false: off."""


@dataclass
class LoraConfig:
    r: int = 8
    """Adapter rank. Higher adapts more, trains more parameters."""
    alpha: int = 16
    """Scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.1
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Linear layers to adapt (names as in the model); null picks the architecture's attention and MLP projections."""


@dataclass
class StrategyConfig:
    name: str = "full"
    """What trains, by the strategy's registered name (`textxfer/strategies/methods/`, one module each): `head`
    only the new classifier (and any new pooler); `freeze` all but the embeddings and the lower `freeze_layers`
    layers; `lora` low-rank adapters plus the head; `full` everything; `gradual` the head, then one more layer group
    from the top every `unfreeze_every` (down to `freeze_layers`; embeddings stay frozen)."""
    freeze_layers: int = 0
    """For `freeze`: how many lower encoder layers stay frozen (the embeddings always are). For `gradual`: the
    floor that unfreezing stops at (these lower layers never train, and are cached)."""
    unfreeze_every: int | Literal["epoch"] = "epoch"
    """For `gradual`: unfreeze the next layer group down every epoch, or every this many optimizer steps. The top
    group trains from the first step (after any `training.head_warmup_epochs`). Faster = more like `freeze`."""
    reinit_layers: int = 0
    """Re-initialise the top this-many layer groups (random, seeded) before training: their pretrained weights are
    specialised to the pre-training task, and a few thousand examples often fine-tune better from fresh ones.
    They must train: not with `head`/`lora`, nor inside the frozen `freeze_layers`. 0 keeps every layer."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings (strategy `lora`)."""
    lora_layers: int | None = None
    """For `lora`: adapt only the top this-many layers (null: all). The rest is frozen and can be cached."""


@dataclass
class EarlyStoppingConfig:
    metric: str | None = None
    """Validation metric to watch (null: `training.metric`). `loss` improves downwards, every other metric up."""
    patience: int = 3
    """Stop after this many evaluations in a row without improvement. Larger rides out plateaus, costs time."""
    min_delta: float = 0.0
    """An improvement smaller than this does not count (in the metric's units, e.g. 0.002 accuracy)."""


@dataclass
class ContrastiveConfig:
    """A SetFit-style stage before the classifier: the body learns to embed same-class examples close together
    and other-class examples apart (cosine similarity of the pooled embeddings, see `model.pooling`). Pairs come
    from within each batch: every example is paired with every other example of its batch, so a pass costs one
    forward/backward per example, and the stage's cost grows linearly with the data (SetFit's default samples
    2 x 20 pairs per example at two forward passes each). Multi-label data: two examples that share a label (as
    SetFit), or that both have none, are a same-class pair."""

    epochs: float = 6
    """Passes over the training examples. Each pass pairs every example with `batch_size - 1` others. More passes
    pull the classes further apart; the cost is linear in epochs x examples. The default is fewshot.yaml's."""
    batch_size: int = 16
    """Examples per step (all pairs among them are used). Larger = more pairs per step, fewer steps."""
    min_steps: int = 0
    """Run at least this many steps, whatever `epochs` gives: with 8 examples per class a few passes are only a
    handful of steps. The extra cost stays small because such data sets are small."""
    min_examples: int = 0
    """Skip the stage when the training set has fewer examples than this (the classifier then trains as after
    the stage, on the pretrained body). 0 always runs it: the stage is what makes a few examples per class count,
    and with so few its cost is small (`textxfer compare --strategies head,contrastive` measures both)."""
    same_class_per_batch: int = 4
    """Batches are built from groups of this many same-class examples, so every example has positive pairs even
    with many classes (77 intents, 8 examples each). 1 = plain random batches."""
    learning_rate: float = 2e-4
    """Peak learning rate of the body during the stage (linear warm-up over 10% of it, then decay). Higher than
    SetFit's 2e-5: the stage makes far fewer steps (a pass is one step per batch, not one per pair)."""
    loss: Literal["cosine", "supcon"] = "cosine"
    """`cosine`: squared error between each pair's cosine similarity and 1 (same class) or 0 (different; as
    SetFit), positives and negatives weighted equally. `supcon`: supervised contrastive (softmax over the batch)."""
    temperature: float = 0.1
    """For `supcon`: softmax temperature of the similarities. Lower = harder negatives weigh more."""
    then: Literal["head", "strategy"] = "head"
    """After the stage: `head` trains only the classifier on the tuned body's (cached) embeddings, as SetFit does
    (fast, robust with few examples); `strategy` goes on training what the strategy trains, end to end."""


@dataclass
class ShardingConfig:
    """How `training.sharding` shards the model over the processes (see docs/distributed.md)."""

    reshard_after_forward: bool = True
    """FSDP: free each layer's gathered weights after its forward pass and gather them again for the backward
    (ZeRO-3-like: least memory); false keeps them until the backward (ZeRO-2-like: one gather less per step)."""
    cpu_offload: bool = False
    """FSDP: keep the weight shards and optimizer state in CPU memory between uses (much slower; for models
    whose shards still do not fit). DeepSpeed: offload the optimizer state to the CPU."""
    wrap: list[str] | None = None
    """FSDP: class names of the modules sharded as one unit each; null: the backbone's layer class (e.g.
    `BertLayer`, `XLMRobertaLayer`), found from the model."""
    zero_stage: Literal[1, 2] = 2
    """DeepSpeed: ZeRO stage 1 (optimizer state sharded) or 2 (and gradients). The weights stay whole on every
    process; to shard them too use `sharding: fsdp`."""


@dataclass
class TrainingConfig:
    epochs: float = 3
    """Passes over the training data."""
    batch_size: int = 32
    """Global batch size (over all processes and accumulation steps)."""
    gradient_accumulation_steps: int = 1
    """Split each batch into this many micro-batches: same results, less memory, a little slower."""
    learning_rate: float = 5e-5
    """Peak learning rate of the trained body parameters (AdamW)."""
    head_learning_rate: float | None = None
    """Learning rate of the new head; null uses learning_rate (head-only runs often want 1e-3 or more)."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay: each layer group below the top trains at this factor of the one above
    (layer i of n at learning_rate x decay^(n-1-i), embeddings at decay^n). Lower layers hold general features
    that few examples should move little. 1.0 = one rate for the whole body; 0.8-0.95 is usual."""
    head_warmup_epochs: float = 0.0
    """Train the head alone for this many epochs first, then the body as the strategy says: a random head's
    large early gradients then do not disturb the pretrained body. 0 = train everything from the start."""
    contrastive: ContrastiveConfig | None = None
    """A contrastive body-tuning stage before the classifier (SetFit-style), e.g. {} for its defaults; null: none. Needs a
    strategy that trains body layers (freeze, full, lora, gradual)."""
    weight_decay: float = 0.01
    """AdamW weight decay, not applied to biases and LayerNorm weights."""
    head_l2: float = 0.0
    """L2 penalty on the new head's weight matrices, in scikit-learn's units: 1/2 x head_l2 x ||W||^2 against the
    loss summed over the training examples (LogisticRegression's C = 1/head_l2). Unlike AdamW's decay it sets the
    optimum the head converges to: on few examples an unpenalised head grows until it is sure of every answer.
    0 = none; `fewshot.yaml` uses 10 (C = 0.1: more would make a head over many classes unsure of itself).
    Multi-label losses are averaged over the labels, so there the same value penalises as many times more."""
    warmup_ratio: float = 0.1
    """Share of steps with linear learning-rate warm-up, then linear decay to zero."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this norm (null: no clipping)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto`: bf16 autocast where the hardware computes bf16 natively (GPUs with bf16, CPUs with AMX or
    AVX512-BF16), else `no` (fp32; emulated bf16 is slower than fp32). `bf16` forces it; `fp16` needs a GPU."""
    eval_every: int | None = None
    """Also evaluate every this many optimizer steps (null: once per epoch)."""
    metric: str = "accuracy"
    """Validation metric that picks the best model (accuracy, macro_f1, micro_f1, loss...)."""
    threshold: Any = "global"
    """Multi-label decision threshold: `global` (one, tuned on validation for micro-F1), `per_label` (each
    label's own, tuned on validation; needs enough positives per label), or a fixed number such as 0.5. Without a
    validation split the tuned modes set one threshold from the training texts' predicted probabilities (the one
    that maximises the micro-F1 they imply), never from the test labels."""
    seed: int = 42
    """Seeds everything, before the model is built, so the new head's initialisation is seeded too."""
    class_weights: Any = "none"
    """Loss weights per class: `none`, `balanced` (inverse frequency), or {label: weight}."""
    balanced_sampler: bool = False
    """Sample training batches so every class is equally likely (for heavily imbalanced data)."""
    group_by_length: bool = True
    """Batch examples of similar length together (random order across batches): far less padding, faster."""
    cache: Literal["auto", "memory", "off"] = "auto"
    """Compute the frozen embeddings + lower layers once and train on their cached output, where exact.
    `auto` also keeps a disk copy (reused by later runs with the same frozen weights and data); `memory` does
    not; `off` recomputes them every step, like other trainers."""
    cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage type of cached activations: 16-bit halves the memory, at a small cost in exactness."""
    cache_budget: int | str | None = "auto"
    """Largest frozen-prefix cache to build: bytes, or a size such as `2GB` or `500MB`; `auto` is a quarter of
    this machine's memory; null: no limit. A cache that would be larger is switched off (the frozen layers run at
    every step instead), and one line says so; one within it is served memory-mapped from its disk copy."""
    threads: int | None = None
    """CPU threads for torch (null: the number of physical cores)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    distributed_timeout: int = 600
    """Seconds the processes of a several-process run wait for each other (a machine that drops out, a step one
    process never reaches) before they stop with an error naming the process; the last complete checkpoint stays."""
    log_every: int = 10
    """Log the training loss every this many optimizer steps."""
    checkpoint_every: int | Literal["epoch"] | None = "epoch"
    """Save a resumable checkpoint (weights that train, optimizer, schedule, random states, data position) every
    this many optimizer steps, or at each epoch end (`epoch`), under RUN_DIR/checkpoints; null: only when
    interrupted (SIGINT/SIGTERM). More often loses less work on a crash, costs disk writes."""
    keep_checkpoints: int = 1
    """How many of the latest checkpoints to keep; the best one by `metric` is kept as well."""
    early_stopping: EarlyStoppingConfig | None = None
    """Stop when the validation metric stops improving, e.g. {patience: 2}; null: train all epochs. The saved
    model is the best evaluation either way."""
    log_with: Literal["tensorboard", "wandb", "mlflow", "none"] = "none"
    """Experiment tracker, through Accelerate (`tensorboard` writes RUN_DIR/logs, offline; wandb and mlflow need
    their packages and their own configuration)."""
    sharding: Literal["fsdp", "deepspeed"] | None = None
    """Shard the model over the processes of a several-process run on GPUs, for backbones whose full fine-tune
    does not fit one GPU (strategies `full` and `lora`): `fsdp` (PyTorch FSDP2 through Accelerate: weights,
    gradients and optimizer state sharded) or `deepspeed` (ZeRO stage 1/2, needs the deepspeed package). null:
    plain DDP, or whatever the `--accelerate-config` file sets up. Options: `sharding_options`."""
    sharding_options: ShardingConfig = field(default_factory=ShardingConfig)
    """Options of `sharding` (FSDP re-sharding, CPU offload, wrapped layer class; DeepSpeed ZeRO stage)."""


@dataclass
class HubPushConfig:
    repo_id: str | None = None
    """Push the finished run to this Hub repo (`user/name`); null: no push."""
    private: bool = False
    """Create the repo private (and make an existing public one private)."""
    revision: str | None = None
    """Push to this branch instead of main."""
    adapter_only: bool = False
    """Push only the LoRA adapter (needs `save_adapter: true`) instead of the merged model."""
    commit_message: str | None = None
    """Commit message (default: one naming the run)."""
    license: str | None = None
    """License for the model card (default: the base checkpoint's)."""


@dataclass
class HubConfig:
    push: HubPushConfig = field(default_factory=HubPushConfig)
    """Publish the run to the Hugging Face Hub after training (token from HF_TOKEN or the login cache)."""


@dataclass
class SelfTrainingConfig:
    """Learning from `data.unlabelled` (docs/self-training.md): train as the recipe says, give the unlabelled
    texts the model's labels, keep the confident ones (the same number per class), train again on the labelled
    plus those, for `rounds` rounds. No test data is read to choose what is kept."""

    rounds: int | Literal["auto"] = "auto"
    """Trainings on labelled + pseudo-labelled texts after the first (each relabels the texts with the model of
    the one before). Each costs about one training on that many more examples. `auto`: 2 when the labelled
    examples are few (at most 16 per class on average, `tools.self_training.FEW_LABELS_PER_CLASS`), where round
    0's model is a weak teacher and round 1's a much better one; else 1 (docs/self-training.md, *A second round
    with few labels*)."""
    per_class: int = 250
    """Pseudo-labels kept per class each round, at most: the most confident of the texts predicted as that class.
    A class predicted for fewer texts keeps fewer. Few and sure pay more than many (docs/self-training.md)."""
    class_quota: Literal["equal", "round0"] = "equal"
    """How the pseudo-labels kept each round are shared among the classes. `equal`: `per_class` each, so a teacher
    leaning to one class cannot fill the training set with it. `round0`: `per_class` x classes in all, shared in
    the class mix round 0's model predicted on the unlabelled texts, for data whose classes are far from equally
    common (spam), where equal counts teach the next round a prior the texts do not have."""
    min_confidence: float = 0.0
    """Never keep a pseudo-label less probable than this (0: the count alone decides)."""
    balance_lengths: bool = True
    """Spread each class's quota evenly over the length quartiles of the unlabelled texts, so no class's kept
    texts are all long or all short (a length cue the next round would learn instead of the classes)."""
    length_spread: Literal["even", "predicted"] = "even"
    """How `balance_lengths` spreads a class's quota over the length quartiles: `even`, the same count in each;
    `predicted`, as the texts predicted as that class are spread over them, so a class whose texts are longer
    (spam) keeps long texts instead of filling its short quartiles with unsure predictions."""
    max_unlabelled: int | None = 5000
    """Label at most this many unlabelled texts (a seeded sample); null: all. Labelling costs a forward pass each."""
    contrastive_epochs: float | None = 2
    """Passes of the contrastive stage (when the recipe has one) in the rounds with pseudo-labels; null: the
    recipe's `training.contrastive.epochs`. With many more examples, fewer passes make as many steps."""
    retrain: Literal["all", "head"] = "all"
    """What the rounds with pseudo-labels train. `all`: the recipe again from the pretrained checkpoint on labelled
    plus pseudo-labelled texts, its contrastive stage included (`contrastive_epochs`): the body learns from them
    (what pays, docs/self-training.md), at the cost of a training on that many examples. `head`: the classifier
    alone, on the body of the round on the labelled examples (cheap; it gained less)."""
    average_bodies: bool = True
    """After the last round, average its body weight by weight with round 0's (the body tuned on the labelled
    examples alone; a "model soup" of two tunings of the same checkpoint), then train the classifier alone on the
    averaged body over the round's texts: the run depends less on the chance of one training on a few hundred texts
    (docs/self-training.md, *Round 0's body averaged in*), for one more classifier training. Only with
    `retrain: all` and a recipe that tunes the body; false: the last round's model is the run's."""
    same_steps: bool = True
    """The rounds with pseudo-labels train (`training.epochs`: the classifier after a contrastive stage, else the
    model) for about as many optimizer steps as the round on the labelled examples alone: fewer epochs over more
    examples, at least one. false: the recipe's `training.epochs` over them all (time grows with the kept count)."""
    align_pseudo_labels: bool = False
    """Distribution alignment (ReMixMatch) before each round selects: the teacher's probabilities on the unlabelled
    texts times (the labelled examples' class mix / their mean), renormalised, so a teacher leaning to one class
    labels fewer unsure texts as it. With two classes it changes no kept text (the most confident per class stay
    the most confident); with more it changes which class an unsure text counts for."""
    round0_mixed_precision: Literal["no", "recipe"] = "no"
    """The precision of round 0, the training on the labelled examples alone. Its model labels the unlabelled texts,
    sets the `round0` class mix and gives half of the averaged body, so its small bf16 rounding errors reach every
    later round (docs/self-training.md, *A bf16 round 0*). `no`: fp32 whatever `training.mixed_precision` says (the
    rounds after it train as the recipe says; round 0 trains on the labelled examples alone, so fp32 costs little);
    `recipe`: as `training.mixed_precision`."""
    final_class_mix: Literal["none", "labelled", "round0"] = "round0"
    """After the last round, add one offset per class to the classifier's bias so the class mix it predicts on
    the unlabelled texts is: `labelled`, the labelled examples' mix (right when they were drawn as the texts
    come; a per-class draw of a skewed data set makes it wrong); `round0`, the mix round 0's model predicted on
    them (self-training then moves the boundary, not the mix: the default, since a model retrained on its own
    pseudo-labels tends to amplify its teacher's lean, docs/self-training.md); `none`. The run's metrics and
    predictions are those of the shifted model, as saved. Never looks at validation or test labels."""


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The pretrained checkpoint and how it reads text."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the examples come from and how they become (text, label) pairs."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    """What is trained and what stays frozen."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """The optimisation loop."""
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    """How `data.unlabelled` is learned from (unused without it)."""
    output_dir: str = "runs/latest"
    """Where the run is written (model, metrics, recipe, log)."""
    save_adapter: bool = False
    """For LoRA: also save the unmerged adapter (with the trained head) next to the merged model."""
    description: str = ""
    """Free text about the recipe; copied to the run and the model card."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Optional push to the Hub after training."""


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
