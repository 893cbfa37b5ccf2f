"""Issue 32 item 1, an after-the-fact trial of distillation over the whole unlabelled set, on the saved runs of
`self_training_sst2.py` (base run `base{seed}`, self-training run `{variant}-{seed}` in its work folder).

The self-training run's classifier (a linear layer on the body's pooled features) is fitted again on its own body:
cross-entropy on the labelled examples, plus cross-entropy against a teacher's probabilities on every unlabelled
text (soft labels), with the recipe's L2 penalty (`training.head_l2`, scikit-learn's 1/C); then shifted to round
0's predicted class mix as `final_class_mix: round0` does. Teachers: `round0` (the base run's probabilities),
`self` (the run's own), `ensemble` (their mean: two bodies tuned apart, whose mean is usually better than
either). Dev accuracy of each, against the run as saved and the two models' ensemble itself.

    .venv/bin/python scripts/experiments/distil_after_the_fact.py --variant default-2threads --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from textxfer.modalities.text.predict import Classifier  # noqa: E402
from textxfer.tools.class_mix import mix_offsets, predicted_mix  # noqa: E402


def texts_of(path: Path) -> tuple[list[str], list[str] | None]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows] if rows and "label" in rows[0] else None


def features(clf: Classifier, texts: list[str], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(the classifier layer's inputs, the logits) of `texts` under the saved model, in input order."""
    seen: list[torch.Tensor] = []
    out: list[torch.Tensor] = []
    hook = clf.model.classifier.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    clf.model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = clf.tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=clf.max_length,
                                    return_tensors="pt")
                out.append(clf.model(**enc).logits.float())
    finally:
        hook.remove()
    return torch.cat(seen).numpy(), torch.cat(out).numpy()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_head(x_l: np.ndarray, y_l: np.ndarray, x_u: np.ndarray, q_u: np.ndarray, l2: float, weight_u: float,
             init: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """W, b minimising sum CE(labelled) + weight_u * sum CE(soft, unlabelled) * (n_l / n_u) + l2/2 |W|^2."""
    xl, xu = torch.from_numpy(x_l).double(), torch.from_numpy(x_u).double()
    yl, qu = torch.from_numpy(y_l).long(), torch.from_numpy(q_u).double()
    w = torch.tensor(init[0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(init[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    scale = weight_u * len(xl) / len(xu)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xl @ w.T + b, yl, reduction="sum")
        loss = loss - scale * (qu * torch.log_softmax(xu @ w.T + b, -1)).sum()
        loss = loss + 0.5 * l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="default-2threads")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="/tmp/st2")
    ap.add_argument("--weights", default="1,4", help="weights of the unlabelled term (times n_labelled/n_unlabelled)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "self-training-distil-after-the-fact.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work)
    dev_texts, dev_labels = texts_of(work / "data" / "dev.csv")
    for seed in [int(s) for s in a.seeds.split(",")]:
        base, run = Classifier(work / f"base{seed}"), Classifier(work / f"{a.variant}-{seed}")
        labels = run.labels
        tr_texts, tr_labels = texts_of(work / "data" / f"train{seed}.csv")
        pool, _ = texts_of(work / "data" / f"unlabelled{seed}.csv")
        y_l = np.asarray([labels.index(v) for v in tr_labels])
        y_dev = np.asarray([labels.index(v) for v in dev_labels])
        x_l, _ = features(run, tr_texts)
        x_u, z1_u = features(run, pool)
        x_d, z1_d = features(run, dev_texts)
        _, z0_u = features(base, pool)
        _, z0_d = features(base, dev_texts)
        p0_u, p1_u = softmax(z0_u), softmax(z1_u)
        round0 = predicted_mix(z0_u)
        layer = run.model.classifier
        init = (layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy())
        l2 = float(yaml.safe_load((work / f"{a.variant}-{seed}" / "recipe.yaml").read_text())["training"]["head_l2"])
        line = {"variant": a.variant, "seed": seed,
                "base": float((z0_d.argmax(1) == y_dev).mean()), "self": float((z1_d.argmax(1) == y_dev).mean()),
                "ensemble_of_two": float(((softmax(z0_d) + softmax(z1_d)).argmax(1) == y_dev).mean())}
        for teacher, q in (("round0", p0_u), ("self", p1_u), ("ensemble", (p0_u + p1_u) / 2)):
            for weight in [float(x) for x in a.weights.split(",")]:
                w, b = fit_head(x_l, y_l, x_u, q, l2, weight, init)
                b = b + mix_offsets(x_u @ w.T + b, round0)
                line[f"{teacher}-w{weight:g}"] = float(((x_d @ w.T + b).argmax(1) == y_dev).mean())
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in line.items()}), flush=True)
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
