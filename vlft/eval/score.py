"""Score result files written by any tool, in the official formats."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.eval.vqa import DEFAULT_PROTOCOL, score_official


class ScoreError(ValueError):
    """Input files do not match the official formats; the message names the file and field."""


def read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ScoreError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def score_vqav2(questions_path: str, annotations_path: str, results_path: str,
                protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The official VQAv2 report for results covering exactly the annotated questions.

    ``protocol``: which version of the official answer processing to follow (see `vlft.eval.vqa`).
    """
    questions = read_json(questions_path, "questions")
    annotations = read_json(annotations_path, "annotations")
    results = read_json(results_path, "results")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise ScoreError(f"{annotations_path}: expected an object with an 'annotations' list")
    if not isinstance(questions, dict) or "questions" not in questions:
        raise ScoreError(f"{questions_path}: expected an object with a 'questions' list")
    if not isinstance(results, list):
        raise ScoreError(f"{results_path}: expected a JSON list of {{'question_id', 'answer'}}")
    answers = {}
    for i, row in enumerate(results):
        if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("answer"), str):
            raise ScoreError(f"{results_path}: entry {i} must be {{'question_id': int, 'answer': str}}, got {row!r}")
        answers[row["question_id"]] = row["answer"]
    annotated = {a["question_id"] for a in annotations["annotations"]}
    asked = {q["question_id"] for q in questions["questions"]}
    if annotated != asked:
        raise ScoreError(f"{questions_path} and {annotations_path} cover different question ids")
    missing, extra = annotated - answers.keys(), answers.keys() - annotated
    if missing or extra:
        raise ScoreError(f"{results_path}: results must answer exactly the annotated questions "
                         f"({len(missing)} missing, e.g. {sorted(missing)[:3]}; {len(extra)} unknown, "
                         f"e.g. {sorted(extra)[:3]})")
    return score_official(annotations["annotations"], answers, protocol=protocol)
