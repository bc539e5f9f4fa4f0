"""Scores of generated answers by task, each with its benchmark's metric.

vqa: VQAv2 accuracy (min(#humans that gave the answer / 3, 1), averaged over the ten 9-answer subsets);
gqa: exact match after GQA's lower-case / punctuation cleanup; nlvr2: accuracy of true/false;
caption: BLEU-1..4, METEOR, ROUGE-L, CIDEr as pycocoevalcap computes them. Video: video_qa, open-ended
accuracy (exact match after the same cleanup, as MSRVTT-QA / MSVD-QA are scored); video_mc, multiple-choice
accuracy (the answer must be the right choice, after the cleanup; TVQA / How2QA); video_caption, the
captioning metrics. Records with a `category` are also scored per category. Percentages except captioning,
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


def _exact_match(task: str):
    def score(predictions: list[str], refs: list[list[str]]) -> dict:
        hits = [normalize_gqa(p) == normalize_gqa(r[0]) for p, r in zip(predictions, refs, strict=True)]
        return {f"{task}_accuracy": round(100.0 * sum(hits) / len(hits), 2), f"{task}_num_questions": len(hits)}
    return score


def _video_caption(predictions: list[str], refs: list[list[str]]) -> dict:
    return {f"video_{k}": v for k, v in _caption(predictions, refs).items()}


SCORERS = {"vqa": _vqa, "gqa": _gqa, "nlvr2": _nlvr2, "caption": _caption, "video_qa": _exact_match("video_qa"),
           "video_mc": _exact_match("video_mc"), "video_caption": _video_caption}
ACCURACY_TASKS = ("gqa", "nlvr2", "video_qa", "video_mc")  # one right answer: accuracy per category too


def score_by_task(tasks: list[str], predictions: list[str], refs: list[list[str]],
                  categories: list[str | None] | None = None) -> dict:
    """One flat dict of every task's metrics (keys prefixed by task, VQA's kept as they were), and for
    single-answer tasks `<task>_accuracy_<category>` for each record category."""
    metrics = {}
    categories = categories or [None] * len(tasks)
    for task in sorted(set(tasks), key=list(SCORERS).index):
        rows = [i for i, t in enumerate(tasks) if t == task]
        metrics.update(SCORERS[task]([predictions[i] for i in rows], [refs[i] for i in rows]))
        if task not in ACCURACY_TASKS:
            continue
        for category in sorted({categories[i] for i in rows} - {None}):
            chosen = [i for i in rows if categories[i] == category]
            part = SCORERS[task]([predictions[i] for i in chosen], [refs[i] for i in chosen])
            metrics[f"{task}_accuracy_{category}"] = part[f"{task}_accuracy"]
    return metrics
