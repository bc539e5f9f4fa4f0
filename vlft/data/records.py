"""Record schema (LLaVA conversation format) and reading it from JSON or JSONL.

A record: ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value": str}, ...]}``.
Evaluation records may add ``"answers": [str, ...]`` (all reference answers) and
``"question_id"``; without ``answers`` the last gpt turn is the reference. ``"task"`` (vqa, gqa,
nlvr2, caption; default vqa) picks the metric and, for VL-BART, the task prefix. ``"image"`` is a
path, or a list of paths for a task with several images (NLVR2), one `<image>` each. A video record has
``"video"`` (a path) and one `<video>` placeholder instead, optional ``"start"``/``"end"`` (seconds: the
segment to sample), ``"choices"`` (multiple-choice answers; the reference is the right one) and
``"category"`` (a question type, scored separately as well).
"""

from __future__ import annotations

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
TASKS = ("vqa", "gqa", "nlvr2", "caption", "video_qa", "video_mc", "video_caption")


def image_paths(record: dict) -> list[str]:
    image = record.get("image")
    return [] if not image else [image] if isinstance(image, str) else list(image)


class DataError(ValueError):
    """A data file or record is bad; the message names the file, record and field.

    ``reason`` is one of vlft.data.skips.REASONS for a bad record (what ``on_error: skip`` counts),
    or None for a problem with a whole file, which is never skipped.
    """

    def __init__(self, message: str, reason: str | None = "malformed_record", where: str | None = None):
        super().__init__(message)
        self.reason, self.where = reason, where


def validate_record(record: dict, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    where = f"{where} (id {record['id']})" if "id" in record else where
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: conversations[{i}] must be {{'from': 'human'|'gpt', 'value': str}}, "
                            f"got {turn!r}")
    image = record.get("image")
    if image is not None and not isinstance(image, str) and not (
            isinstance(image, list) and image and all(isinstance(i, str) for i in image)):
        raise DataError(f"{where}: field 'image' must be a path string or a list of them, got {image!r}")
    if record.get("video") is not None:
        _validate_video(record, turns, where)
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if placeholders != len(image_paths(record)):
        raise DataError(f"{where}: {placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s) for "
                        f"{len(image_paths(record))} image(s)", reason="image_count_mismatch", where=where)
    if record.get("task", "vqa") not in TASKS:
        raise DataError(f"{where}: field 'task' must be one of {list(TASKS)}, got {record['task']!r}")
    answers = record.get("answers")
    if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
        raise DataError(f"{where}: field 'answers' must be a list of strings")


def _validate_video(record: dict, turns: list[dict], where: str) -> None:
    if not isinstance(record["video"], str) or record.get("image"):
        raise DataError(f"{where}: field 'video' must be one path string, in a record without 'image'")
    placeholders = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in turns)
    if placeholders != 1:
        raise DataError(f"{where}: {placeholders} '{VIDEO_PLACEHOLDER}' placeholder(s) for 1 video",
                        reason="image_count_mismatch", where=where)
    for key in ("start", "end"):
        if record.get(key) is not None and (not isinstance(record[key], (int, float)) or record[key] < 0):
            raise DataError(f"{where}: field '{key}' must be a number of seconds >= 0, got {record[key]!r}")
    choices = record.get("choices")
    if choices is not None and (not isinstance(choices, list) or len(choices) < 2
                                or not all(isinstance(c, str) for c in choices)):
        raise DataError(f"{where}: field 'choices' must be a list of at least two strings")


def references(record: dict) -> list[str]:
    """Reference answers of an evaluation record."""
    if record.get("answers"):
        return list(record["answers"])
    return [record["conversations"][-1]["value"]]


def question_turns(record: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant answer."""
    turns = record["conversations"]
    return turns[:-1] if ROLES[turns[-1]["from"]] == "assistant" else turns
