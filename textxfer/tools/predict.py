"""`textxfer predict`: a saved model's labels for new texts or images, written as JSONL or CSV."""

from __future__ import annotations

import csv
import json
import sys

from textxfer.modalities.image.classifier import ImageClassifier, image_inputs


def write_predictions(items: list[str], results: list[list[dict]], output: str | None, key: str = "text",
                      pairs: list[str] | None = None) -> None:
    rows = [{key: t, **({"text_pair": pairs[i]} if pairs is not None else {}),
             "label": r[0]["label"] if r else None, "score": r[0]["score"] if r else None,
             "labels": [x["label"] for x in r], "scores": [round(x["score"], 6) for x in r]}
            for i, (t, r) in enumerate(zip(items, results, strict=True))]
    if output and output.endswith((".csv", ".tsv")):
        with open(output, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t" if output.endswith(".tsv") else ",")
            w.writerow([key, *(["text_pair"] if pairs is not None else []), "label", "score", "labels", "scores"])
            for r in rows:
                w.writerow([r[key], *([r["text_pair"]] if pairs is not None else []), r["label"], r["score"],
                            "|".join(r["labels"]), "|".join(map(str, r["scores"]))])
        return
    stream = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        for r in rows:
            stream.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if output:
            stream.close()


def predict_images(model_dir: str, source: str, output: str | None, top_k: int = 1) -> None:
    """`textxfer predict RUN_DIR --input IMAGE|FOLDER|LIST`: one JSONL (or CSV) row per image."""
    paths = image_inputs(source)
    results = ImageClassifier(model_dir).predict(paths, top_k=top_k)
    write_predictions([str(p) for p in paths], results, output, key="image")
