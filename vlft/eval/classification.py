"""Top-1 accuracy of an image classifier on data.eval, sharded over the ranks of a distributed run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from vlft.data.classification import ImageLabelCollator, LabelledImageDataset
from vlft.eval.shard import evaluating, map_sharded


@torch.no_grad()
def predict_labels(model, dataset: LabelledImageDataset, batch_size: int, device) -> dict[int, int]:
    """Predicted label index per dataset index, gathered on every rank (vlft.eval.shard: every rank runs the
    same number of forwards, as ZeRO-3 needs)."""
    dtype = next(model.parameters()).dtype

    def classify(batch: dict) -> list[int]:
        return model(pixel_values=batch["pixel_values"].to(device, dtype))["logits"].argmax(-1).tolist()

    with evaluating(model):
        return map_sharded(dataset, batch_size, ImageLabelCollator(), classify, desc="classify")


def evaluate_classification(model, dataset: LabelledImageDataset, labels: list[str], batch_size: int, device="cpu",
                            predictions_path: str | Path | None = None) -> dict:
    """Top-1 accuracy (percent) over ``dataset`` with the model's ``labels``, with the majority-class and
    chance baselines."""
    predicted = predict_labels(model, dataset, batch_size, device)
    truth = {i: dataset.records[i]["label"] for i in predicted}
    hits = sum(labels[p] == truth[i] for i, p in predicted.items())
    majority, majority_count = Counter(truth.values()).most_common(1)[0]
    metrics = {"top1_accuracy": round(100.0 * hits / len(predicted), 2), "num_images": len(predicted),
               "majority_label": majority, "majority_baseline_accuracy": round(100.0 * majority_count / len(truth), 2),
               "chance_accuracy": round(100.0 / len(labels), 2)}
    if dataset.skips is not None:
        metrics["skipped_records"] = dataset.skips.counts()
    if predictions_path is not None:
        rows = [{"id": dataset.records[i].get("id", i), "label": truth[i], "prediction": labels[p]}
                for i, p in sorted(predicted.items())]
        Path(predictions_path).write_text(json.dumps(rows, indent=1))
    return metrics
