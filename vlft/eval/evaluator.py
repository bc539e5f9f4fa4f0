"""Run generation over an eval set, score it, write predictions and metrics."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.config import RunConfig
from vlft.data.records import DataError, references
from vlft.eval.classification import evaluate_classification
from vlft.eval.generate import generate_answers
from vlft.eval.tasks import score_by_task
from vlft.models.contract import AnswersInText, ClassifiesImages


def evaluate_model(family, model, bundle, cfg: RunConfig, device="cpu", synced_gpus: bool = False,
                   predictions_path: str | Path | None = None) -> dict:
    """The evaluation of ``cfg.data.eval`` that suits the family: generation scored by task, or top-1 accuracy.
    ``family``: a vlft.models.contract.ModelFamily that AnswersInText or ClassifiesImages."""
    dataset = family.eval_dataset(cfg, bundle)
    if isinstance(family, AnswersInText):
        return evaluate_vqa(model, dataset, cfg, device=device, synced_gpus=synced_gpus,
                            predictions_path=predictions_path, **family.generation_options(model, bundle))
    if isinstance(family, ClassifiesImages):
        # synced_gpus is for generation loops; one forward per batch stays in step under ZeRO-3 because every
        # rank runs the same number of batches (vlft.eval.shard)
        return evaluate_classification(model, dataset, family.label_names(bundle), cfg.eval.batch_size,
                                       device=device, predictions_path=predictions_path)
    raise TypeError(f"{family.__name__} neither answers in text nor classifies images (vlft.models.contract)")


def evaluate_vqa(model, dataset, cfg: RunConfig, device="cpu", synced_gpus: bool = False,
                 predictions_path: str | Path | None = None, **generate_kwargs) -> dict:
    """Greedy answers on the prompts of ``dataset`` (the family's eval dataset of cfg.data.eval) scored by
    each record's task (VQA accuracy, the official definition, with the majority baseline, for records
    without one; see vlft.eval.tasks). ``generate_kwargs`` (collate_fn, model_inputs) are the family's."""
    answers = generate_answers(model, dataset, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                               synced_gpus=synced_gpus, device=device, **generate_kwargs)
    # questions skipped under on_error: skip are left out of the score and counted
    kept = [(i, r, a) for i, (r, a) in enumerate(zip(dataset.records, answers, strict=True)) if a is not None]
    if not kept:
        why = dataset.skips.summary() if dataset.skips is not None else "the set is empty"
        raise DataError(f"{dataset.path}: no evaluation record could be read ({why})", reason=None)
    indices, records, predictions = ([k[n] for k in kept] for n in range(3))
    refs = [references(r) for r in records]
    tasks = [r.get("task", "vqa") for r in records]
    metrics = score_by_task(tasks, predictions, refs, [r.get("category") for r in records])
    if dataset.skips is not None:
        metrics["skipped_records"] = dataset.skips.counts()
    if predictions_path is not None:
        # a record without an id is named by its place in the eval set, as `vlft predict --input` names it
        rows = [{"question_id": r.get("question_id", r.get("id", i)), "task": t, "answer": p, "references": ref}
                for i, r, t, p, ref in zip(indices, records, tasks, predictions, refs, strict=True)]
        Path(predictions_path).write_text(json.dumps(rows, indent=1))
    return metrics
