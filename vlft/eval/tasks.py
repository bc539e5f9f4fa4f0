"""Scores of generated answers by task, each with its benchmark's metric.

vqa: VQAv2 accuracy (min(#humans that gave the answer / 3, 1), averaged over the ten 9-answer subsets);
gqa: exact match after GQA's lower-case / punctuation cleanup; nlvr2: accuracy of true/false;
caption: BLEU-1..4, METEOR, ROUGE-L, CIDEr as pycocoevalcap computes them. Percentages except captioning,
whose scores are pycocoevalcap's fractions.
"""

from __future__ import annotations

from collections import Counter

from vlft.eval.caption import METRICS as CAPTION_METRICS
from vlft.eval.caption import caption_scores
from vlft.eval.gqa import gqa_accuracy, normalize_gqa
from vlft.eval.vqa import mean_accuracy


def majority_baseline(reference_lists: list[list[str]]) -> tuple[str, float]:
    """The most common first reference answer, and the accuracy of always giving it."""
    majority = Counter(refs[0] for refs in reference_lists).most_common(1)[0][0]
    return majority, mean_accuracy([majority] * len(reference_lists), reference_lists)


def _vqa(predictions: list[str], refs: list[list[str]]) -> dict:
    majority, baseline = majority_baseline(refs)
    return {"vqa_accuracy": round(mean_accuracy(predictions, refs), 2), "num_questions": len(refs),
            "majority_answer": majority, "majority_baseline_accuracy": round(baseline, 2)}


def _gqa(predictions: list[str], refs: list[list[str]]) -> dict:
    return {"gqa_accuracy": round(gqa_accuracy(predictions, [r[0] for r in refs]), 2),
            "gqa_num_questions": len(refs)}


def _nlvr2(predictions: list[str], refs: list[list[str]]) -> dict:
    hits = [normalize_gqa(p) == normalize_gqa(r[0]) for p, r in zip(predictions, refs, strict=True)]
    return {"nlvr2_accuracy": round(100.0 * sum(hits) / len(hits), 2), "nlvr2_num_examples": len(hits)}


def _caption(predictions: list[str], refs: list[list[str]]) -> dict:
    scores = caption_scores(dict(enumerate(refs)), dict(enumerate(predictions)))
    return {**{f"caption_{name}": round(scores[name], 4) for name in CAPTION_METRICS},
            "caption_num_images": len(refs)}


SCORERS = {"vqa": _vqa, "gqa": _gqa, "nlvr2": _nlvr2, "caption": _caption}


def score_by_task(tasks: list[str], predictions: list[str], refs: list[list[str]]) -> dict:
    """One flat dict of every task's metrics (keys prefixed by task, VQA's kept as they were)."""
    metrics = {}
    for task in sorted(set(tasks), key=list(SCORERS).index):
        rows = [i for i, t in enumerate(tasks) if t == task]
        metrics.update(SCORERS[task]([predictions[i] for i in rows], [refs[i] for i in rows]))
    return metrics
