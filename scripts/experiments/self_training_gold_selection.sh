#!/usr/bin/env bash
# Issue 32 diagnostic: is it the pseudo-labels' mistakes or the texts chosen that limit self-training? The texts the
# defaults keep (round 0's model, the 250 surest per class, length-balanced: `pseudo_labels.select`) are trained on
# twice, as a round trains them (contrastive stage 2 passes, classifier epochs scaled to round 0's steps, head_l2
# scaled by the examples), once with their pseudo-labels and once with their gold labels. Reads the work folder of
# scripts/experiments/self_training_sst2.py (default /tmp/st2: data/ and the base runs base{seed}).
#     bash scripts/experiments/self_training_gold_selection.sh     (WORK=/tmp/st2 OUT=/tmp/gs SEEDS="0 1 2")
set -e
cd "$(dirname "$0")/../.."
WORK=${WORK:-/tmp/st2}; OUT=${OUT:-/tmp/gs}; SEEDS=${SEEDS:-0 1 2}
mkdir -p "$OUT"
for seed in $SEEDS; do
  .venv/bin/python - "$seed" "$WORK" "$OUT" <<'PY' 2>/dev/null
import csv, sys
import numpy as np
from textxfer.modalities.text.predict import Classifier
from textxfer.tools.pseudo_labels import select
s, work, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(f"{work}/data/unlabelled_truth{s}.csv", encoding="utf-8")))
train = list(csv.DictReader(open(f"{work}/data/train{s}.csv", encoding="utf-8")))
m = Classifier(f"{work}/base{s}")
texts = [r["text"] for r in rows]
chosen = select(m.probabilities(texts), m.labels, 250, np.asarray([len(t.split()) for t in texts]))
gold = [rows[i]["label"] for i in chosen.index]
pseudo = [m.labels[y] for y in chosen.labels]
print(f"seed {s}: kept {len(gold)}, pseudo-labels right {np.mean([a == b for a, b in zip(gold, pseudo)]):.3f}")
for name, labels in (("pseudo", pseudo), ("gold", gold)):
    with open(f"{out}/train{s}-{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f); w.writerow(["text", "label"])
        w.writerows([(r["text"], r["label"]) for r in train] + [(texts[i], y) for i, y in zip(chosen.index, labels)])
PY
  for name in pseudo gold; do
    n=$(($(wc -l < "$OUT/train$seed-$name.csv") - 1))
    ep=$(python3 -c "print(max(1.0, round(30*128/$n, 2)))"); l2=$(python3 -c "print(10*$n/128)")
    .venv/bin/textxfer train recipes/fewshot.yaml --overwrite --output-dir "$OUT/$name$seed" --set data.text_column=text \
      --set data.label_column=label --set data.format=csv --set data.labels=null --set data.examples_per_class=null \
      --set data.test="$WORK/data/dev.csv" --set data.train="$OUT/train$seed-$name.csv" --set training.contrastive.epochs=2 \
      --set training.epochs="$ep" --set training.head_l2="$l2" > "$OUT/$name$seed.log" 2>&1
    acc=$(python3 -c "import json;print(json.load(open('$OUT/$name$seed/metrics.json'))['test']['accuracy'])")
    base=$(python3 -c "import json;print(json.load(open('$WORK/base$seed/metrics.json'))['test']['accuracy'])")
    echo "seed $seed: 64 labelled + the kept texts with $name labels: dev accuracy $acc (64 labelled alone: $base)"
  done
done
