"""Issue 32 diagnostic: do round 0's embeddings give the unlabelled texts other labels than its classifier does?
Label spreading (scikit-learn, k-nearest-neighbour graph on the L2-normalised embeddings the classifier reads) over
the labelled and the 5,000 unlabelled texts of `self_training_sst2.py`'s work folder and its base runs, scored
against the labels the runs never see (unlabelled_truth{seed}.csv). Output of the committed run:
docs/results/self-training-label-spreading.txt

    .venv/bin/python scripts/experiments/label_spreading_check.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from sklearn.semi_supervised import LabelSpreading

from textxfer.modalities.text.embeddings import embed_texts
from textxfer.modalities.text.predict import Classifier


def rows_of(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="/tmp/st2")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work)
    for s in [int(x) for x in a.seeds.split(",")]:
        pool, train = rows_of(work / "data" / f"unlabelled_truth{s}.csv"), rows_of(work / "data" / f"train{s}.csv")
        m = Classifier(work / f"base{s}")
        emb, logits = embed_texts(m.model, m.tokenizer, [r["text"] for r in train + pool], None, m.max_length,
                                  with_logits=True)
        n = len(train)
        y = np.array([m.labels.index(r["label"]) for r in train] + [-1] * len(pool))
        truth = np.array([m.labels.index(r["label"]) for r in pool])
        p = torch.from_numpy(logits).softmax(-1).numpy()[n:]
        pred = p.argmax(1)
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        print(f"seed {s}: classifier labels {(pred == truth).mean():.3f} of {len(pool):,} right", flush=True)
        for k in (10, 30):
            spread = LabelSpreading(kernel="knn", n_neighbors=k, alpha=0.8, max_iter=100).fit(x, y)
            q = spread.label_distributions_[n:]
            lp, agree, wrong = q.argmax(1), q.argmax(1) == pred, pred != truth
            print(f"  label spreading k={k}: {(lp == truth).mean():.3f} right; agrees with the classifier on "
                  f"{agree.mean():.3f} (of those {(pred[agree] == truth[agree]).mean():.3f} right); right on "
                  f"{(lp[wrong] == truth[wrong]).mean():.3f} of the texts the classifier gets wrong; mean of both "
                  f"{((p + q) / 2).argmax(1).__eq__(truth).mean():.3f} right", flush=True)


if __name__ == "__main__":
    main()
