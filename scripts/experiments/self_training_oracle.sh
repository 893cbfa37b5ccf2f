#!/usr/bin/env bash
# Issue 32 diagnostic, the ceiling of pseudo-labelling: what 250 or 1,000 *gold*-labelled unlabelled texts per class
# (the first of each class in unlabelled_truth{seed}.csv, written by scripts/experiments/self_training_sst2.py into
# its work folder, default /tmp/st2) add to the 64 labelled per class, trained as a self-training round trains
# (contrastive stage 2 passes, the classifier's epochs scaled to round 0's optimizer steps). Compare with the base
# runs base{seed} of that script. Output of the committed run: docs/results/bench_accuracy-self-training-sst2-oracle.txt
#     bash scripts/experiments/self_training_oracle.sh        (WORK=/tmp/st2 OUT=/tmp/oracle SEEDS="0 1 2")
set -e
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/st2}; OUT=${OUT:-/tmp/oracle}; SEEDS=${SEEDS:-0 1 2}
mkdir -p "$OUT"
for seed in $SEEDS; do
  .venv/bin/python - "$seed" "$WORK" "$OUT" <<'PY'
import csv, sys
s, work, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(f"{work}/data/unlabelled_truth{s}.csv", encoding="utf-8")))
train = list(csv.DictReader(open(f"{work}/data/train{s}.csv", encoding="utf-8")))
for n in (250, 1000):
    gold = [r for r in rows if r["label"] == "negative"][:n] + [r for r in rows if r["label"] == "positive"][:n]
    with open(f"{out}/train{s}-{n}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(["text", "label"]); w.writerows([(r["text"], r["label"]) for r in train + gold])
PY
  for n in 250 1000; do
    ep=$(python3 -c "print(max(1.0, round(30*128/(128+2*$n), 2)))")
    .venv/bin/textxfer train recipes/fewshot.yaml --overwrite --output-dir "$OUT/o$n-$seed" --set data.text_column=text \
      --set data.label_column=label --set data.format=csv --set data.labels=null --set data.examples_per_class=null \
      --set data.test="$WORK/data/dev.csv" --set data.train="$OUT/train$seed-$n.csv" --set training.contrastive.epochs=2 \
      --set training.epochs="$ep" > "$OUT/o$n-$seed.log" 2>&1
    gold=$(python3 -c "import json;print(json.load(open('$OUT/o$n-$seed/metrics.json'))['test']['accuracy'])")
    base=$(python3 -c "import json;print(json.load(open('$WORK/base$seed/metrics.json'))['test']['accuracy'])")
    echo "seed $seed: 64 labelled + $n gold per class: dev accuracy $gold (64 labelled alone: $base)"
  done
done
# How right round 0's pseudo-labels are by confidence rank (share of each class's predicted texts, most confident
# first), against the labels the runs never see.
for seed in $SEEDS; do
  .venv/bin/python - "$seed" "$WORK" <<'PY' 2>/dev/null
import csv, sys
import numpy as np
from textxfer.modalities.text.predict import Classifier
s, work = int(sys.argv[1]), sys.argv[2]
rows = list(csv.DictReader(open(f"{work}/data/unlabelled_truth{s}.csv", encoding="utf-8")))
m = Classifier(f"{work}/base{s}")
p = m.probabilities([r["text"] for r in rows])
truth = np.array([m.labels.index(r["label"]) for r in rows])
pred, conf = p.argmax(1), p.max(1)
line = []
for q in (0.1, 0.2, 0.3, 0.5, 1.0):
    acc = []
    for c in range(len(m.labels)):
        idx = np.flatnonzero(pred == c)
        idx = idx[np.argsort(-conf[idx])][: int(q * len(idx))]
        acc.append(f"{(truth[idx] == c).mean():.3f}")
    line.append(f"top {q:.0%}: {', '.join(acc)}")
print(f"seed {s} ({(pred == truth).mean():.1%} of {len(rows):,} right; {', '.join(m.labels)}): " + "; ".join(line))
PY
done
