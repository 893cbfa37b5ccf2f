"""Self-training on `data.unlabelled`: `textxfer train` hands a recipe with unlabelled texts over to `self_train`.

Rounds of the recipe's own training (`textxfer.tools.train.train`, with the splits given in memory):
  round 0   the recipe on the labelled examples alone (validation as the recipe has it, no test), in fp32 unless
            `self_training.round0_mixed_precision: recipe` (its model is the teacher of every later round);
  round r   the unlabelled texts labelled by the model of round r-1, the confident ones kept (`pseudo_labels.select`:
            the same number per class, most confident first, spread over lengths), then a training on the labelled
            plus those pseudo-labelled texts: with `self_training.retrain: head` the classifier alone, on round 0's
            saved model (its body as the labelled examples tuned it); with `all` the recipe again from the
            pretrained checkpoint, its contrastive stage (if the recipe has one) pairing them too, in
            `self_training.contrastive_epochs` passes. With `same_steps`, for about round 0's optimizer steps.
            With `align_pseudo_labels` the teacher's probabilities are first aligned to the labelled class mix.
  after     with `final_class_mix`, the last round's classifier bias is shifted so that the class mix it predicts
            on the unlabelled texts is the target one, and the run is scored again as saved (`class_mix`).
`textxfer.tools.train.train` dispatches here and is passed in as the function that trains one round. The last
round is the run: it alone reads the test split, and it is written to the output directory like any run,
with the self-training record added (history.json `self_training`, metrics.json `self_training`, a report
section, run.json `train_seconds` covering every round). The earlier rounds train in a temporary folder next to
it, removed at the end; their logs are kept under `self_training/`.

What is never used: test labels or test texts (unlabelled texts equal to a training, validation or test text are
removed before anything is labelled, see `unlabelled_texts`), and the labels of the unlabelled file.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from textxfer.config.schema import Recipe, to_dict
from textxfer.core.errors import UserError
from textxfer.core.precision import effective_mixed_precision
from textxfer.tools import class_mix as mix
from textxfer.tools.pseudo_labels import Selection, class_mix, quotas, select
from textxfer.tools.unlabelled_texts import (
    UnlabelledTexts,
    check_text_recipe,
    clean_unlabelled,
    read_unlabelled,
)

log = logging.getLogger("textxfer")

SAMPLE_SALT = 17
"""Added to `training.seed` for the seeded sample of `self_training.max_unlabelled` texts."""
FEW_LABELS_PER_CLASS = 16
"""`self_training.rounds: auto` trains two rounds when the labelled examples number at most this many per class on
average, one above. With 8 per class the second round's teacher (round 1's model) is far better than round 0's,
and a second round paid on three of four data sets; on SST-2 at 64 per class it did not pay for its time
(docs/self-training.md, *A second round with few labels*). Between the two nothing was measured."""


def self_train(recipe: Recipe, train: Callable, overwrite: bool = False, command: str | None = None,
               memory: dict | None = None, resume=None) -> tuple[Path, dict]:
    """Train `recipe` (which has `data.unlabelled`) with self-training, each round through `train` (the function
    of `textxfer.tools.train`, which hands such recipes over to this one); returns the output directory (the
    recipe's) and the last round's metrics. `memory`: splits given from Python, as `train` takes them."""
    from textxfer.engine.setup import prepare_output_dir

    check_text_recipe(recipe)
    if resume is not None and resume is not False:
        raise UserError("`--resume` does not continue a self-training run (`data.unlabelled`): its rounds are "
                        "separate trainings. Train again with `--overwrite`, or remove `data.unlabelled`.")
    out = Path(recipe.output_dir)
    prepare_output_dir(out, overwrite)  # refuse a finished run before any training, as `train` would
    started = time.time()
    splits, labels = _labelled_splits(recipe, memory or {})
    pool = _unlabelled(recipe, splits)
    st = recipe.self_training
    frames = {name: _frame(split, labels) for name, split in splits.items()}
    rounds: list[dict] = []
    labelled_mix = mix.class_shares(frames["train"]["label"].to_numpy(), len(labels))
    round0_mix = None
    work = Path(tempfile.mkdtemp(prefix=".self-training-", dir=out.parent if out.parent.is_dir() else None))
    round0_precision = _round0_precision(recipe)
    try:
        previous = train(_round_recipe(recipe, work / "round-0", labels, None, precision=round0_precision),
                         overwrite=True, command=command, train=frames["train"], **_eval_frames(frames, test=False))
        rounds.append(_round_record(0, previous, None, len(frames["train"]))
                      | {"mixed_precision": effective_mixed_precision(round0_precision)})
        _keep_log(previous.output_dir, work, 0)
        first = previous
        count = rounds_to_train(st.rounds, len(frames["train"]), len(labels))
        for r in range(1, count + 1):
            last = r == count
            scored = time.time()
            probs = _probabilities(previous.output_dir, pool, recipe.training.threads)
            teacher_mix = mix.predicted_mix(probs)
            round0_mix = teacher_mix if round0_mix is None else round0_mix
            if st.align_pseudo_labels:
                probs = mix.align(probs, labelled_mix)
            per_class = st.per_class if st.class_quota == "equal" else quotas(st.per_class, round0_mix)
            chosen = select(probs, labels, per_class, _lengths(pool) if st.balance_lengths else None,
                            st.min_confidence, st.length_spread)
            if not len(chosen.index):
                raise UserError(f"self-training round {r}: no unlabelled text reached `self_training.min_confidence` "
                                f"{st.min_confidence}; lower it (0 keeps the most confident whatever their score).")
            labelled_in = round(time.time() - scored, 2)
            log.warning(f"self-training round {r}: kept {len(chosen.index):,} of {len(pool.texts):,} pseudo-labelled "
                        f"texts ({class_mix(chosen)}), labelled in {labelled_in:.1f}s")
            data = _with_pseudo_labels(frames["train"], pool, chosen)
            average = last and _averages_bodies(recipe)
            target = out if last and not average else work / f"round-{r}"
            epochs = _round_epochs(recipe, len(frames["train"]), len(data))
            body = first.output_dir if st.retrain == "head" else None
            previous = train(_round_recipe(recipe, target, labels, st.contrastive_epochs, epochs, body, len(data),
                                           len(frames["train"])), overwrite=True,
                             command=command, train=data, **_eval_frames(frames, test=last and not average))
            rounds.append(_round_record(r, previous, chosen, len(data), len(pool.texts), labelled_in)
                          | {"trained": st.retrain, "epochs": epochs, "teacher_mix": _named(teacher_mix, labels),
                             "mixed_precision": effective_mixed_precision(recipe.training.mixed_precision)})
            if not last or average:
                _keep_log(previous.output_dir, work, r)
            if average:
                previous = _train_on_averaged_body(recipe, train, command, first, previous, out, work, labels,
                                                   frames, data, epochs, rounds[-1])
        if st.final_class_mix != "none":
            target = labelled_mix if st.final_class_mix == "labelled" else round0_mix
            rounds[-1]["class_mix_shift"] = _shift(recipe, out, pool, target, labels, data)
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            if "validation" in metrics:
                rounds[-1]["validation"] = metrics["validation"]
        _move_logs(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"unlabelled": pool.source, "unlabelled_counts": pool.counts, "notes": pool.notes,
              "settings": to_dict(recipe)["self_training"], "rounds": rounds,
              "seconds": round(time.time() - started, 2)}
    _write_record(recipe, out, record)
    return out, json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def rounds_to_train(setting: int | str, labelled: int, classes: int) -> int:
    """The rounds with pseudo-labels to train: `self_training.rounds` as given, or for `auto` 2 when the `labelled`
    examples number at most `FEW_LABELS_PER_CLASS` per class on average (over `classes`), else 1; `auto` says
    which, once."""
    if setting != "auto":
        return int(setting)
    count = 2 if labelled <= FEW_LABELS_PER_CLASS * classes else 1
    log.warning(f"self-training: {count} round{'s' if count > 1 else ''} with pseudo-labels (`rounds: auto`: "
                f"{labelled:,} labelled examples, {labelled / classes:.1f} per class, "
                f"{'at most' if count > 1 else 'more than'} {FEW_LABELS_PER_CLASS})")
    return count


# ------------------------------------------------------------------------------------------ data

def _labelled_splits(recipe: Recipe, memory: dict) -> tuple[dict, list[str]]:
    """The labelled splits exactly as the recipe's own training reads them (few-shot draw, carved splits, dedupe),
    and the label names."""
    from textxfer.data.splits import load_splits

    splits = load_splits(recipe.data, recipe.training.seed, memory)
    return dict(splits.items()), list(splits.labels)


def _unlabelled(recipe: Recipe, splits: dict) -> UnlabelledTexts:
    """`data.unlabelled` read and cleaned of texts in any labelled split, sampled to `max_unlabelled`."""
    from textxfer.tools.run_labelled import split_keys

    taken = {name: split_keys(split) for name, split in splits.items()}
    texts, pairs, source = read_unlabelled(recipe.data.unlabelled, recipe.data)
    pool = clean_unlabelled(texts, pairs, source, taken)
    cap = recipe.self_training.max_unlabelled
    if cap is not None and len(pool.texts) > cap:
        idx = np.sort(np.random.default_rng(recipe.training.seed + SAMPLE_SALT).permutation(len(pool.texts))[:cap])
        message = (f"{source}: labelling a seeded sample of {cap:,} of its {len(pool.texts):,} unlabelled texts "
                   "(`self_training.max_unlabelled`).")
        log.warning(message)
        pool.notes.append(message)
        pool.texts = [pool.texts[i] for i in idx]
        pool.pairs = [pool.pairs[i] for i in idx] if pool.pairs is not None else None
        pool.counts["sampled"] = cap
    return pool


def _frame(split, labels: list[str]):
    """A prepared split as the DataFrame a round trains on: `text` (`text_pair`), `label` as the class id."""
    import pandas as pd

    cols = {"text": list(split["text"])}
    if "text_pair" in split.column_names:
        cols["text_pair"] = list(split["text_pair"])
    cols["label"] = [int(y) for y in split["label"]]
    return pd.DataFrame(cols)


def _with_pseudo_labels(train_frame, pool: UnlabelledTexts, chosen: Selection):
    """The labelled rows, then the kept unlabelled texts with their pseudo-labels."""
    import pandas as pd

    cols = {"text": [pool.texts[i] for i in chosen.index]}
    if pool.pairs is not None:
        cols["text_pair"] = [pool.pairs[i] for i in chosen.index]
    cols["label"] = [int(y) for y in chosen.labels]
    return pd.concat([train_frame, pd.DataFrame(cols)], ignore_index=True)


def _eval_frames(frames: dict, test: bool) -> dict:
    """The validation split for every round; the test split for the last one alone."""
    return {k: v for k, v in frames.items() if k == "validation" or (test and k == "test")}


def _lengths(pool: UnlabelledTexts) -> np.ndarray:
    """Words per text (with its pair): what length balancing compares."""
    pairs = pool.pairs or [""] * len(pool.texts)
    return np.asarray([len(t.split()) + len(p.split()) for t, p in zip(pool.texts, pairs, strict=True)])


# ------------------------------------------------------------------------------------------ rounds

def _averages_bodies(recipe: Recipe) -> bool:
    """Whether the last round's body is averaged with round 0's: `self_training.average_bodies`, where the rounds
    retrain the body (`retrain: all`) and the recipe tunes one (a contrastive stage, or a strategy other than
    `head`); otherwise the two bodies are the same."""
    st = recipe.self_training
    tunes_body = recipe.training.contrastive is not None or recipe.strategy.name != "head"
    return st.average_bodies and st.retrain == "all" and tunes_body


def _train_on_averaged_body(recipe: Recipe, train: Callable, command: str | None, first, last, out: Path,
                            work: Path, labels: list[str], frames: dict, data, epochs: float, record: dict):
    """The run's model: round 0's body and the last round's averaged weight by weight (`weight_average`), then
    the classifier alone trained on the averaged body over the last round's texts; it is written to `out` and
    scored on the test split. Its time and validation scores are added to the last round's `record`."""
    from textxfer.tools.weight_average import EVEN, average_bodies

    started = time.time()
    soup = average_bodies(first.output_dir, last.output_dir, work / "averaged-body", EVEN)
    log.warning(f"self-training: round 0's body and round {record['round']}'s averaged; the classifier trains on "
                "the averaged body")
    result = train(_round_recipe(recipe, out, labels, None, epochs, soup, len(data), len(frames["train"])),
                   overwrite=True, command=command, train=data, **_eval_frames(frames, test=True))
    record["averaged_body"] = {"rounds": [0, record["round"]], "weight": EVEN,
                               "seconds": round(time.time() - started, 2)}
    if "validation" in result.metrics:
        record["averaged_body"]["validation"] = result.metrics["validation"]
    return result


def _round_epochs(recipe: Recipe, labelled: int, examples: int) -> float:
    """`training.epochs` of a round on `examples` texts: with `self_training.same_steps`, as many optimizer steps
    as the recipe's epochs over the `labelled` examples make (at least one epoch)."""
    epochs = recipe.training.epochs
    if not recipe.self_training.same_steps or examples <= labelled:
        return epochs
    return max(1.0, round(epochs * labelled / examples, 2))


def _round0_precision(recipe: Recipe) -> str:
    """`training.mixed_precision` of round 0: fp32 (`no`) unless `self_training.round0_mixed_precision: recipe`."""
    st = recipe.self_training
    return recipe.training.mixed_precision if st.round0_mixed_precision == "recipe" else "no"


def _round_recipe(recipe: Recipe, out: Path, labels: list[str], contrastive_epochs: float | None,
                  epochs: float | None = None, body: Path | None = None, examples: int | None = None,
                  labelled: int | None = None, precision: str | None = None) -> dict:
    """The recipe of one round: its data given in memory, already drawn and cleaned (so nothing is drawn, carved
    or de-duplicated again), labels as class ids into `labels` (the recipe's label order). With `body` (a run
    directory), the round trains the classifier alone on that run's saved model (`self_training.retrain: head`).
    With `examples` (the round's training texts) and `labelled` (round 0's), `training.head_l2` is scaled by
    their ratio. `precision`: its `training.mixed_precision`, if not the recipe's."""
    r = to_dict(recipe)
    r["data"].update({"train": None, "validation": None, "test": None, "unlabelled": None, "format": "auto",
                      "text_column": "text", "label_column": "label", "labels": list(labels),
                      "label_level": "full", "label_pattern": None, "examples_per_class": None,
                      "max_train_examples": None, "validation_split": 0.0, "test_split": 0.0, "dedupe": False,
                      "skip_bad_rows": False, "header": None, "delimiter": None, "quoting": "auto",
                      "text_pair_column": "text_pair" if recipe.data.text_pair_column is not None else None})
    r["output_dir"] = str(out)
    if precision is not None:
        r["training"]["mixed_precision"] = precision
    if epochs is not None:
        r["training"]["epochs"] = epochs
    if examples is not None and labelled:
        # training.head_l2 is against the loss summed over the examples: with the pseudo-labelled texts added the
        # same value would weigh less per example, and a classifier fitted on texts its teacher was surest of would
        # grow sure of everything (log loss several times round 0's); scaled, each example weighs as in round 0
        r["training"]["head_l2"] = recipe.training.head_l2 * examples / labelled
    if body is not None:
        from textxfer.core.layout import find_model_dir

        r["model"]["name"] = str(find_model_dir(body))
        r["strategy"].update({"name": "head", "freeze_layers": 0, "reinit_layers": 0})
        r["training"]["contrastive"] = None
        return r
    if contrastive_epochs is not None and r["training"].get("contrastive"):
        r["training"]["contrastive"]["epochs"] = contrastive_epochs
    return r


def _probabilities(run_dir: Path, pool: UnlabelledTexts, threads: int | None) -> np.ndarray:
    """The class probabilities the run's saved model gives every unlabelled text, on the recipe's CPU threads
    (`training.threads`) as its training ran."""
    from textxfer.modalities.text.predict import Classifier

    with _threads(threads):
        return Classifier(run_dir).probabilities(pool.texts, pool.pairs)


@contextmanager
def _threads(threads: int | None):
    """torch's CPU threads set to the recipe's `training.threads` for a labelling pass, restored after."""
    import torch

    from textxfer.core.hardware import default_threads

    before = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(threads or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shift(recipe: Recipe, out: Path, pool: UnlabelledTexts, target: np.ndarray, labels: list[str], data) -> dict:
    """The final class-mix shift of the saved run `out` (`class_mix.shift_saved_run`: the model, its metrics and
    predictions rewritten); its record (target, offsets, the mix predicted on the unlabelled texts before and
    after)."""
    weights = _class_weights(recipe, labels, data["label"].to_numpy())
    record = {"target": recipe.self_training.final_class_mix, "target_mix": _named(target, labels)}
    started = time.time()
    with _threads(recipe.training.threads):
        record |= mix.shift_saved_run(out, target, pool.texts, pool.pairs, weights)
    record["seconds"] = round(time.time() - started, 2)
    log.warning(f"self-training: classifier bias shifted by {', '.join(f'{x:+.3f}' for x in record['offsets'])} "
                f"so the class mix it predicts on the unlabelled texts is the {record['target']} one "
                f"({record['unlabelled_mix_before']} -> {record['unlabelled_mix_after']})")
    return record


def _class_weights(recipe: Recipe, labels: list[str], targets: np.ndarray) -> np.ndarray | None:
    """The class weights of the last round's loss (`training.class_weights` over its training labels), or None."""
    from textxfer.engine.batches import class_weight_tensor

    weights = class_weight_tensor(recipe.training.class_weights, labels, targets)
    return weights.numpy() if weights is not None else None


def _named(shares: np.ndarray, labels: list[str]) -> dict[str, float]:
    return {lab: round(float(s), 4) for lab, s in zip(labels, shares, strict=True)}


def _round_record(r: int, result, chosen: Selection | None, examples: int, scored: int = 0,
                  labelling_seconds: float | None = None) -> dict:
    """One round's line: what it trained on, what it kept, its time, and its validation scores (never test)."""
    run = json.loads((result.output_dir / "run.json").read_text(encoding="utf-8"))
    record = {"round": r, "training_examples": examples, "train_seconds": run.get("train_seconds")}
    if labelling_seconds is not None:
        record["labelling_seconds"] = labelling_seconds
    if chosen is not None:
        record |= chosen.record(scored)
    if "validation" in result.metrics:
        record["validation"] = result.metrics["validation"]
    return record


def _keep_log(run_dir: Path, work: Path, r: int) -> None:
    """An earlier round's train.log, kept as WORK/self_training/round-R.log (its run folder is removed)."""
    src = run_dir / "train.log"
    if src.is_file():
        (work / "self_training").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, work / "self_training" / f"round-{r}.log")


def _move_logs(work: Path, out: Path) -> None:
    """The earlier rounds' logs into OUT/self_training/, once the last round has replaced whatever run was in OUT
    (until then an earlier run there stays whole)."""
    kept = work / "self_training"
    if kept.is_dir():
        shutil.rmtree(out / "self_training", ignore_errors=True)
        shutil.move(str(kept), str(out / "self_training"))


def _write_record(recipe: Recipe, out: Path, record: dict) -> None:
    """The self-training record into the last round's run: history.json and metrics.json `self_training`,
    run.json `train_seconds` over every round (the last round's own in `last_round_seconds`), the user's recipe
    (not the rounds' in-memory one) as recipe.yaml, and the report rewritten with its section."""
    from textxfer.config.reading import save_recipe
    from textxfer.core.files import write_json
    from textxfer.outputs.report import write_report

    for name in ("history.json", "metrics.json"):
        data = json.loads((out / name).read_text(encoding="utf-8"))
        data["self_training"] = record if name == "history.json" else _summary(record)
        write_json(out / name, data)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["last_round_seconds"] = run.get("train_seconds")
    run["train_seconds"] = round(sum(r.get("train_seconds") or 0 for r in record["rounds"])
                                 + sum(r.get("labelling_seconds") or 0 for r in record["rounds"])
                                 + sum(r.get(step, {}).get("seconds", 0) for r in record["rounds"]
                                       for step in ("averaged_body", "class_mix_shift")), 2)
    run["self_training"] = {"rounds": len(record["rounds"]) - 1, "unlabelled": record["unlabelled"],
                            "seconds": record["seconds"]}
    write_json(out / "run.json", run)
    save_recipe(recipe, out / "recipe.yaml")
    try:
        write_report(out)
    except Exception as e:  # the report is a convenience; the model and the record are written
        log.warning(f"could not rewrite the report with the self-training section: {e}")


def _summary(record: dict) -> dict:
    """metrics.json's short form: per round, how many pseudo-labels were kept and their class mix."""
    return {"unlabelled_kept": record["unlabelled_counts"].get("kept"),
            "unlabelled_removed": {k: v for k, v in record["unlabelled_counts"].items()
                                   if k.startswith("in_") or k in ("empty", "repeated")},
            "rounds": [{k: r[k] for k in ("round", "kept", "per_class", "min_confidence", "class_mix_shift",
                                          "averaged_body") if k in r} for r in record["rounds"][1:]]}
