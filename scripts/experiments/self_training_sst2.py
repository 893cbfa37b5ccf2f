"""Issue 32 item 1, part 1 of `../shared/acceptance/V-every-label`, as an experiment: SST-2 at 64 labelled
examples per class (the first 64 of each class after `random.Random(seed)` shuffles the training file) plus 5,000
unlabelled training sentences (labels dropped), `recipes/fewshot.yaml` alone against the same recipe with
`data.unlabelled`, scored on the 872 dev sentences. Extra `--set` overrides (for example
`self_training.rounds=2`) try a variant of the self-training run; the base run of each seed is trained once and
reused (it does not depend on them).

    .venv/bin/python scripts/experiments/self_training_sst2.py --name rounds2 --set self_training.rounds=2

`--shift NAME` tries the final class-mix shift (`self_training.final_class_mix`) after the fact on the saved
self-training runs of variant NAME: each run is copied and `class_mix.shift_saved_run` (the code the option
runs) shifts and rescores the copy, for the `labelled` and `round0` targets (the latter from the run's record),
so one training per seed gives the variant with and without the shift.

One JSON line per seed is appended to `--out` (default docs/results/bench_accuracy-self-training-sst2-variants.jsonl):
variant name, its overrides, seed, base and self-training dev accuracy, their training times (run.json
`train_seconds`, every round of the self-training run counted), and per round the pseudo-labels kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from label_issues_acceptance import read, write  # the acceptance check's SST-2 reading and CSV writing

ROOT = Path(__file__).resolve().parents[2]
TEXTXFER = str(Path(sys.executable).with_name("textxfer"))
PER_CLASS = 64
UNLABELLED = 5000


def read_sst2(name: str) -> list[tuple[str, str]]:
    return read(str(Path(os.environ.get("TEXTXFER_DATA", ROOT.parent / "shared" / "data")) / "sst2"), name)


def make_files(folder: Path, seeds: list[int]) -> None:
    """The acceptance check's files: dev.csv, train{seed}.csv, unlabelled{seed}.csv (and, for diagnostics only,
    unlabelled_truth{seed}.csv with the labels the runs never see)."""
    folder.mkdir(parents=True, exist_ok=True)
    train, dev = read_sst2("train.tsv"), read_sst2("dev.tsv")
    write(folder / "dev.csv", ["text", "label"], dev)
    for seed in seeds:
        rng = random.Random(seed)
        rows = train[:]
        rng.shuffle(rows)
        sample = [r for r in rows if r[1] == "negative"][:PER_CLASS] + [r for r in rows if r[1] == "positive"][:PER_CLASS]
        taken = {r[0] for r in sample} | {r[0] for r in dev}
        pool = [r for r in rows if r[0] not in taken][:UNLABELLED]
        write(folder / f"train{seed}.csv", ["text", "label"], sample)
        write(folder / f"unlabelled{seed}.csv", ["text"], [(x,) for x, _ in pool])
        write(folder / f"unlabelled_truth{seed}.csv", ["text", "label"], pool)


def run(folder: Path, out: Path, seed: int, extra: list[str], threads: int | None) -> dict:
    """`textxfer train recipes/fewshot.yaml` on train{seed}.csv (with `extra` overrides); metrics and run record."""
    if not (out / "metrics.json").is_file():
        common = ["data.text_column=text", "data.label_column=label", "data.format=csv", "data.labels=null",
                  "data.examples_per_class=null", f"data.test={folder / 'dev.csv'}", f"data.train={folder / f'train{seed}.csv'}"]
        common += [f"training.threads={threads}"] if threads else []
        cmd = ["nice", "-n", "5", TEXTXFER, "train", str(ROOT / "recipes" / "fewshot.yaml"), "--overwrite",
               "--output-dir", str(out)]
        for s in common + extra:
            cmd += ["--set", s]
        with open(str(out) + ".log", "w", encoding="utf-8") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    run_record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return {"accuracy": metrics["test"]["accuracy"], "train_seconds": run_record.get("train_seconds"),
            "self_training": metrics.get("self_training")}


def diagnose(run_dir: Path, folder: Path, seed: int) -> None:
    """How right the pseudo-labels of a run's model are on unlabelled{seed}.csv, against the labels the runs never
    see (unlabelled_truth{seed}.csv): overall, and of the k kept per class by `pseudo_labels.select`, with and
    without length balancing (accuracy per class and the kept texts' mean length in words)."""
    import numpy as np

    from textxfer.modalities.text.predict import Classifier
    from textxfer.tools.pseudo_labels import select

    with open(folder / f"unlabelled_truth{seed}.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    model = Classifier(run_dir)
    truth = np.asarray([model.labels.index(r["label"]) for r in rows])
    probs = model.probabilities(texts)
    lengths = np.asarray([len(t.split()) for t in texts])
    print(f"{run_dir}: {len(texts):,} unlabelled texts, {100 * (probs.argmax(1) == truth).mean():.1f}% labelled right")
    for k in (100, 250, 500, 1000):
        for balance in (True, False):
            chosen = select(probs, model.labels, k, lengths if balance else None)
            right = chosen.labels == truth[chosen.index]
            per = ", ".join(f"{name} {100 * right[chosen.labels == c].mean():.1f}% right, "
                            f"{lengths[chosen.index[chosen.labels == c]].mean():.1f} words"
                            for c, name in enumerate(model.labels))
            print(f"  {k} per class, length-balanced {balance}: {100 * right.mean():.1f}% right ({per})")


def shift_after(folder: Path, work: Path, name: str, seed: int, target: str, hard: bool, threads: int | None) -> dict:
    """A copy of run `{name}-{seed}` shifted by `class_mix.shift_saved_run` to the `target` mix (`labelled`: the
    labelled examples' class mix; `round0`: round 0's predicted mix on the unlabelled texts, from the run's
    record) on the run's unlabelled texts, cleaned as the run cleaned them; its dev accuracy and shift record."""
    import shutil

    import numpy as np
    import torch

    from textxfer.tools.class_mix import class_shares, shift_saved_run
    from textxfer.tools.unlabelled_texts import clean_unlabelled

    src = work / f"{name}-{seed}"
    dst = work / f"{name}-{seed}-shift-{target}{'' if hard else '-soft'}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    history = json.loads((src / "history.json").read_text(encoding="utf-8"))["self_training"]
    labels = json.loads((src / "run.json").read_text(encoding="utf-8"))["labels"]
    with open(folder / f"train{seed}.csv", encoding="utf-8", newline="") as f:
        train = [labels.index(r["label"]) for r in csv.DictReader(f)]
    with open(folder / f"unlabelled{seed}.csv", encoding="utf-8", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    pool = clean_unlabelled(texts, None, "unlabelled", {})
    assert len(pool.texts) == history["unlabelled_counts"]["kept"], "not the run's unlabelled texts"
    mix = class_shares(np.asarray(train), len(labels)) if target == "labelled" else \
        np.asarray([history["rounds"][1]["teacher_mix"][lab] for lab in labels])
    if threads:
        torch.set_num_threads(threads)
    record = shift_saved_run(dst, mix, pool.texts, None, hard=hard)
    metrics = json.loads((dst / "metrics.json").read_text(encoding="utf-8"))
    return {"accuracy": metrics["test"]["accuracy"], "shift": record}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="variant", help="variant name (also its run folders' name)")
    ap.add_argument("--set", action="append", default=[], help="recipe override of the self-training run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="training.threads of both runs (1 on a busy machine)")
    ap.add_argument("--work", default="/tmp/self-training-sst2", help="data files and runs")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "bench_accuracy-self-training-sst2-variants.jsonl"))
    ap.add_argument("--shift", default=None, metavar="NAME",
                    help="shift the saved runs of variant NAME after the fact (see above) instead of training")
    ap.add_argument("--diagnose", default=None, help="a run folder: print how right its pseudo-labels are instead")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    work = Path(a.work)
    make_files(work / "data", seeds)
    if a.diagnose:
        diagnose(Path(a.diagnose), work / "data", seeds[0])
        return
    if a.shift:
        for target, hard in (("labelled", True), ("round0", True), ("labelled", False)):
            gains = []
            for seed in seeds:
                base = run(work / "data", work / f"base{seed}", seed, [], a.threads)
                shifted = shift_after(work / "data", work, a.shift, seed, target, hard, a.threads)
                gain = shifted["accuracy"] - base["accuracy"]
                gains.append(gain)
                variant = f"{a.shift}+shift-{target}{'' if hard else '-soft'}"
                line = {"variant": variant, "post_hoc_on": a.shift, "seed": seed, "base_accuracy": base["accuracy"],
                        "self_accuracy": shifted["accuracy"], "gain": gain, "class_mix_shift": shifted["shift"]}
                with open(a.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
                print(f"{variant} seed {seed}: base {base['accuracy']:.4f} shifted {shifted['accuracy']:.4f} gain "
                      f"{100 * gain:+.2f} points (offsets {shifted['shift']['offsets']})", flush=True)
            print(f"{variant}: mean gain {100 * sum(gains) / len(gains):+.2f} points over seeds {a.seeds}")
        return
    gains = []
    for seed in seeds:
        base = run(work / "data", work / f"base{seed}", seed, [], a.threads)
        self_ = run(work / "data", work / f"{a.name}-{seed}", seed,
                    [f"data.unlabelled={work / 'data' / f'unlabelled{seed}.csv'}"] + a.set, a.threads)
        gain = self_["accuracy"] - base["accuracy"]
        gains.append(gain)
        line = {"variant": a.name, "overrides": a.set, "seed": seed, "base_accuracy": base["accuracy"],
                "self_accuracy": self_["accuracy"], "gain": gain, "base_train_seconds": base["train_seconds"],
                "self_train_seconds": self_["train_seconds"], "self_training": self_["self_training"]}
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{a.name} seed {seed}: base {base['accuracy']:.4f} self {self_['accuracy']:.4f} gain "
              f"{100 * gain:+.2f} points, time {self_['train_seconds']}s vs {base['train_seconds']}s", flush=True)
    print(f"{a.name}: mean gain {100 * sum(gains) / len(gains):+.2f} points over seeds {a.seeds}")


if __name__ == "__main__":
    main()
