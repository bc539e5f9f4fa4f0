"""GQA accuracy as the official evaluation computes it, over a balanced questions file.

Official files: questions ``{question_id: {"answer", "types": {"structural", "semantic"}, "isBalanced",
...}}``; predictions a JSON list of ``{"questionId", "prediction"}``. A prediction is correct when it
equals the answer after lower-casing, trimming and dropping a trailing period (what LLaVA's and
VL-T5's converters do before the official script's exact match). Questions with structural type
``query`` are open, the rest binary; scores are percentages.
"""

from __future__ import annotations

from collections import defaultdict

from vlft.eval.score import ScoreError, read_json


def normalize_gqa(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()


def gqa_accuracy(predictions: list[str], answers: list[str]) -> float:
    """Mean exact match (percent) after normalisation."""
    hits = [normalize_gqa(p) == normalize_gqa(a) for p, a in zip(predictions, answers, strict=True)]
    return 100.0 * sum(hits) / max(len(hits), 1)


def _percent(scores: list[float]) -> float:
    return round(100.0 * sum(scores) / len(scores), 2) if scores else 0.0


def score_gqa(questions_path: str, results_path: str) -> dict:
    """{"accuracy", "binary", "open", "perStructuralType", "perSemanticType", "num_questions"} in percent."""
    questions = read_json(questions_path, "questions")
    results = read_json(results_path, "results")
    if not isinstance(questions, dict):
        raise ScoreError(f"{questions_path}: expected an object mapping question ids to questions")
    if not isinstance(results, list):
        raise ScoreError(f"{results_path}: expected a JSON list of {{'questionId', 'prediction'}}")
    predictions = {}
    for i, row in enumerate(results):
        if not isinstance(row, dict) or "questionId" not in row or not isinstance(row.get("prediction"), str):
            raise ScoreError(f"{results_path}: entry {i} must be {{'questionId': str, 'prediction': str}}, "
                             f"got {row!r}")
        predictions[str(row["questionId"])] = row["prediction"]
    balanced = {qid: q for qid, q in questions.items() if q.get("isBalanced", True)}
    missing = balanced.keys() - predictions.keys()
    if missing:
        raise ScoreError(f"{results_path}: {len(missing)} balanced question(s) have no prediction, "
                         f"e.g. {sorted(missing)[:3]}")
    scores: dict[str, list[float]] = defaultdict(list)
    structural: dict[str, list[float]] = defaultdict(list)
    semantic: dict[str, list[float]] = defaultdict(list)
    for qid, question in balanced.items():
        if "answer" not in question or "types" not in question:
            raise ScoreError(f"{questions_path}: question {qid} needs 'answer' and 'types'")
        score = float(normalize_gqa(predictions[qid]) == normalize_gqa(question["answer"]))
        scores["accuracy"].append(score)
        kind = question["types"].get("structural")
        scores["open" if kind == "query" else "binary"].append(score)
        structural[kind].append(score)
        semantic[question["types"].get("semantic")].append(score)
    return {"accuracy": _percent(scores["accuracy"]), "binary": _percent(scores["binary"]),
            "open": _percent(scores["open"]), "num_questions": len(balanced),
            "perStructuralType": {k: _percent(v) for k, v in sorted(structural.items())},
            "perSemanticType": {k: _percent(v) for k, v in sorted(semantic.items())}}
