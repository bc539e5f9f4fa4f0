"""A JSONL dataset holding good records and one record of every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import draw, write_shapes_dataset

# reason -> how many records of the faulty dataset have it
EXPECTED_SKIPS = {"malformed_record": 2, "image_count_mismatch": 1, "missing_image": 1, "corrupt_image": 3,
                  "too_long": 1}


def _turns(question: str, answer: str, image: bool = True) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


def bad_records(images: Path) -> dict[str, str]:
    """name -> one JSONL line; the images they name are written into ``images``."""
    good_png = (images / "0.png").read_bytes()
    (images / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    draw("circle", "red").save(images / "full.jpg", quality=95)
    jpeg = (images / "full.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "garbage.png").write_bytes(b"this is not an image at all" * 20)
    long_question = "what shape " * 200  # the image tokens come after 400 words: past max_length before any answer
    records = {
        "malformed_json": '{"id": "broken", "conversations": [',
        "no_conversations": {"id": "no-conv", "image": "0.png"},
        "image_count": {"id": "two-placeholders", "image": "0.png",
                        "conversations": _turns("<image> what shape is this?", "circle")},
        "missing_image": {"id": "missing", "image": "nope.png", "conversations": _turns("what shape?", "circle")},
        "truncated_png": {"id": "trunc-png", "image": "truncated.png", "conversations": _turns("what?", "circle")},
        "truncated_jpeg": {"id": "trunc-jpg", "image": "truncated.jpg", "conversations": _turns("what?", "circle")},
        "not_an_image": {"id": "garbage", "image": "garbage.png", "conversations": _turns("what?", "circle")},
        "too_long": {"id": "long", "image": "0.png",
                     "conversations": [{"from": "human", "value": long_question + "<image>"},
                                       {"from": "gpt", "value": "circle"}]},
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in records.items()}


def write_jsonl(path: Path, good: list[dict], bad_lines: list[str]) -> Path:
    """Good records first, bad lines interleaved after every second good record."""
    lines = [json.dumps(r) for r in good]
    for i, bad in enumerate(bad_lines):
        lines.insert(2 * i + 1, bad)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def faulty_data(tmp_path) -> dict:
    data = write_shapes_dataset(tmp_path / "shapes")
    good = json.loads(data["train"].read_text())
    bad = bad_records(data["images"])
    return {**data, "good": good, "bad": bad, "root": tmp_path}
