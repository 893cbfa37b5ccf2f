#!/usr/bin/env python3
"""Does `textxfer suggest` choose texts worth labelling? Learning curves against random choice and small-text.

    .venv/bin/python scripts/bench_suggest.py                       # SST-2, AG News, TREC-6; 3 seeds
    .venv/bin/python scripts/bench_suggest.py --sets trec --seeds 1 --pool 500 --rounds 3   # a quick try

Per data set and seed: a pool of unlabelled training texts (up to --pool, a seeded draw), 16 of them labelled at
random to start; then rounds of 16: the classifier is trained on the labelled texts, a strategy picks 16 more from
the pool, their true labels are revealed, until 256. After every round the classifier is scored on the data set's
evaluation split; the area under the curve is the mean accuracy over the 16 points (16, 32, ..., 256 labels), in
points. Every strategy starts from the same 16 texts per seed.

The classifier is the cheap stand-in for a run that the curve needs (16 trainings per curve): fewshot.yaml's head
(logistic regression, C = 1/head_l2, `textxfer.tools.out_of_fold.fit_head`) on the
recipe's pretrained mean-pooled MiniLM embeddings (cached on disk). `textxfer suggest` reads the same two things
from a run: its model's probabilities and the embeddings its classifier reads; the strategies here call the same
function (`textxfer.tools.suggest.choose`).

Strategies: random; textxfer's `badge` (the default), `margin`, `least-confidence`; and small-text's (1.4)
LeastConfidence, PredictionEntropy and BreakingTies as the anchor (their query() on the same classifier). Accuracy
only, no timing. Writes docs/results/bench_suggest.{json,txt,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_label_issues import POOL, RECIPE, RESULTS, dataset, embedder, pool_draw  # noqa: E402

from textxfer.tools.suggest import STRATEGIES  # noqa: E402

SETS = ("sst2", "agnews", "trec")
START, STEP, END = 16, 16, 256
OURS = STRATEGIES
"""textxfer's own strategies, every one `textxfer suggest --strategy` offers."""
SMALL_TEXT = {"small-text LeastConfidence": "LeastConfidence", "small-text PredictionEntropy": "PredictionEntropy",
              "small-text BreakingTies": "BreakingTies"}


class HeadProbabilities:
    """small-text's classifier interface (predict_proba on its dataset) over a fitted head."""

    def __init__(self, head, n_classes: int):
        self.head, self.n_classes = head, n_classes

    def predict_proba(self, ds) -> np.ndarray:
        from textxfer.tools.out_of_fold import head_probabilities

        return head_probabilities(self.head, ds.x, self.n_classes)


def curve(strategy: str, pool_x: np.ndarray, pool_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray,
          n_classes: int, start: np.ndarray, seed: int, l2: float, end: int) -> list[float]:
    """Accuracy after each round, from `start` labelled texts to `end`."""
    from textxfer.tools.out_of_fold import fit_head, head_probabilities
    from textxfer.tools.suggest import choose

    rng = np.random.default_rng([seed, 3])
    labelled = list(start)
    accs = []
    while True:
        head = fit_head(pool_x[labelled], pool_y[labelled], l2, seed)
        accs.append(float((head_probabilities(head, eval_x, n_classes).argmax(1) == eval_y).mean()))
        if len(labelled) >= end:
            return accs
        rest = np.setdiff1d(np.arange(len(pool_y)), labelled)
        if strategy == "random":
            picked = rng.choice(rest, STEP, replace=False)
        elif strategy in OURS:
            probs = head_probabilities(head, pool_x[rest], n_classes)
            order, _ = choose(probs, pool_x[rest], STEP, strategy, seed=seed * 1000 + len(labelled),
                              labelled=pool_x[labelled])
            picked = rest[order]
        else:
            import small_text

            ds = small_text.SklearnDataset(pool_x, pool_y)
            query = getattr(small_text, SMALL_TEXT[strategy])()
            picked = query.query(HeadProbabilities(head, n_classes), ds, rest, np.asarray(labelled),
                                 pool_y[labelled], n=STEP)
        labelled += [int(i) for i in picked]


def strategies(with_small_text: bool) -> list[str]:
    names = ["random", *OURS]
    if with_small_text:
        try:
            import small_text  # noqa: F401
        except ImportError:
            print("small-text is not installed (pip install small-text): its strategies are left out")
        else:
            names += list(SMALL_TEXT)
    return names


def plot(results: list[dict], names: list[str], path: Path) -> None:
    from textxfer.outputs.plots import new_figure, save_figure

    sets = list(dict.fromkeys(r["set"] for r in results))
    fig = new_figure(5.2 * len(sets), 4.2)
    for k, name in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), k + 1)
        for strategy in names:
            rs = [r["accuracy"] for r in results if r["set"] == name and r["strategy"] == strategy]
            if not rs:
                continue
            m = np.mean(rs, 0) * 100
            x = START + STEP * np.arange(len(m))
            style = "-" if strategy in OURS else ":" if strategy == "random" else "--"
            ax.plot(x, m, style, label=strategy, linewidth=2 if strategy == "badge" else 1.2)
        ax.set_title(f"{name} ({len({r['seed'] for r in results if r['set'] == name})} seeds)")
        ax.set_xlabel("labelled texts")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    save_figure(fig, path)


def summarise(results: list[dict], names: list[str]) -> list[str]:
    lines = [f"{'set':<8} {'strategy':<30} {'AUC':>6} {'vs random':>9} {'last':>7}"]
    for name in dict.fromkeys(r["set"] for r in results):
        base = np.mean([r["auc"] for r in results if r["set"] == name and r["strategy"] == "random"])
        for strategy in names:
            rs = [r for r in results if r["set"] == name and r["strategy"] == strategy]
            if rs:
                auc = np.mean([r["auc"] for r in rs])
                last = np.mean([r["accuracy"][-1] for r in rs]) * 100
                lines.append(f"{name:<8} {strategy:<30} {auc:6.2f} {auc - base:+9.2f} {last:7.2f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pool", type=int, default=POOL, help="unlabelled pool size per set (a seeded draw)")
    p.add_argument("--rounds", type=int, default=(END - START) // STEP, help="rounds of 16 after the first 16")
    p.add_argument("--strategies", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--no-small-text", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "textxfer" / "bench-embeddings")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_suggest")
    a = p.parse_args()
    import torch

    from textxfer.config.reading import load_recipe

    torch.set_num_threads(1)
    names = a.strategies.split(",") if a.strategies else strategies(not a.no_small_text)
    l2 = load_recipe(RECIPE).training.head_l2
    end = START + STEP * a.rounds
    embed = embedder(a.cache_dir)
    results = []
    for name in a.sets.split(","):
        data = dataset(name)
        draw = pool_draw(len(data["train_texts"]), a.pool)
        pool_x = embed([data["train_texts"][i] for i in draw.tolist()])
        pool_y = data["train_labels"][draw]
        eval_x, eval_y = embed(data["eval_texts"]), data["eval_labels"]
        for seed in range(a.seeds):
            start = np.random.default_rng([seed, 11]).choice(len(pool_y), START, replace=False)
            for strategy in names:
                accs = curve(strategy, pool_x, pool_y, eval_x, eval_y, len(data["labels"]), start, seed, l2, end)
                r = {"set": name, "seed": seed, "strategy": strategy, "accuracy": accs,
                     "auc": float(np.mean(accs) * 100), "pool": len(pool_y), "eval": len(eval_y)}
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "accuracy"}
                                 | {"last": round(accs[-1], 4)}), flush=True)
    lines = summarise(results, names)
    header = (f"suggest: learning curves {START}..{end} labels in rounds of {STEP}, seeds 0-{a.seeds - 1}, pool "
              f"<= {a.pool}; classifier: fewshot.yaml's head on pretrained MiniLM embeddings; AUC = mean accuracy "
              "(points) over the rounds")
    text = "\n".join([header, *lines]) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".txt").write_text(text, encoding="utf-8")
    a.out.with_suffix(".json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()},
                                                      "results": results}, indent=1) + "\n", encoding="utf-8")
    tmp = a.out.with_suffix(".png.tmp")  # written whole, then renamed: never half a plot
    plot(results, names, tmp)
    os.replace(tmp, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
