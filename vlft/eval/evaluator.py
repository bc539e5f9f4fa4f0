"""Run generation over an eval set, score it, write predictions and metrics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vlft.config import RunConfig
from vlft.data.dataset import PromptDataset
from vlft.data.records import DataError, references
from vlft.eval.generate import generate_answers
from vlft.eval.vqa import mean_accuracy
from vlft.models.base import ModelBundle


def majority_baseline(reference_lists: list[list[str]]) -> tuple[str, float]:
    """The most common first reference answer, and the accuracy of always giving it."""
    majority = Counter(refs[0] for refs in reference_lists).most_common(1)[0][0]
    return majority, mean_accuracy([majority] * len(reference_lists), reference_lists)


def evaluate_vqa(model, bundle: ModelBundle, cfg: RunConfig, device="cpu", synced_gpus: bool = False,
                 predictions_path: str | Path | None = None) -> dict:
    """VQA accuracy (official definition) of greedy answers on cfg.data.eval, with the majority baseline."""
    dataset = PromptDataset(cfg.data.eval, bundle, cfg.data.image_folder, cfg.eval.max_samples,
                            on_error=cfg.data.on_error)  # as llava.eval_dataset builds it
    answers = generate_answers(model, dataset, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                               synced_gpus=synced_gpus, device=device)
    # questions skipped under on_error: skip are left out of the score and counted
    kept = [(r, a) for r, a in zip(dataset.records, answers, strict=True) if a is not None]
    if not kept:
        raise DataError(f"{cfg.data.eval}: no evaluation record could be read ({dataset.skips.summary()})",
                        reason=None)
    records, predictions = [r for r, _ in kept], [a for _, a in kept]
    refs = [references(r) for r in records]
    majority, baseline = majority_baseline(refs)
    metrics = {"vqa_accuracy": round(mean_accuracy(predictions, refs), 2), "num_questions": len(records),
               "majority_answer": majority, "majority_baseline_accuracy": round(baseline, 2)}
    if dataset.skips is not None:
        metrics["skipped_records"] = dataset.skips.counts()
    if predictions_path is not None:
        rows = [{"question_id": r.get("question_id", r.get("id", i)), "answer": p, "references": ref}
                for i, (r, p, ref) in enumerate(zip(records, predictions, refs, strict=True))]
        Path(predictions_path).write_text(json.dumps(rows, indent=1))
    return metrics
