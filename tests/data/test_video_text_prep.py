"""data_prep/video_text.py on small files in the official TVQA, How2QA, MSRVTT-QA, MSVD-QA, TVC, YouCook2 and
MSR-VTT schemas: records pass vlft's schema, keep timestamps, choices and every reference."""

import json
import sys
from pathlib import Path

import pytest

from vlft.data.records import validate_record

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "data_prep"))
import video_text  # noqa: E402
from image_text import FormatError  # noqa: E402


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def check(records: list[dict]) -> None:
    for i, record in enumerate(records):
        validate_record(record, f"record {i}")


def test_tvqa_rows_become_multiple_choice_records_with_their_segment(tmp_path):
    row = {"a0": "A sandwich", "a1": "A book", "a2": "A cup", "a3": "A phone", "a4": "A hat", "answer_idx": 2,
           "q": "What is Ross holding?", "qid": 7, "ts": "60.56-67.77", "vid_name": "friends_s01e01_seg02_clip_00",
           "show_name": "Friends"}
    path = jsonl(tmp_path / "tvqa_val.jsonl", [row, {**row, "qid": 8, "ts": "NaN-NaN"}])
    records = video_text.multiple_choice(path, for_eval=True)
    check(records)
    first = records[0]
    assert first["video"] == "friends_s01e01_seg02_clip_00.mp4" and first["task"] == "video_mc"
    assert (first["start"], first["end"]) == (60.56, 67.77) and "start" not in records[1]
    assert first["choices"][2] == "A cup" and first["answers"] == ["A cup"] and first["question_id"] == 7
    assert first["conversations"][0]["value"].startswith("<video>\nWhat is Ross holding? choices: A sandwich | ")
    bad = jsonl(tmp_path / "bad.jsonl", [{**row, "answer_idx": 5}])
    with pytest.raises(FormatError, match=rf"{bad} line 1: answer_idx 5 does not name one of 5 answers"):
        video_text.multiple_choice(bad, for_eval=True)


def test_msrvtt_and_msvd_open_ended_questions(tmp_path):
    rows = [{"answer": "dog", "id": 1, "question": "what is running?", "video_id": 7010}]
    (tmp_path / "msrvtt.json").write_text(json.dumps(rows))
    records = video_text.open_ended(tmp_path / "msrvtt.json", for_eval=True)
    check(records)
    assert records[0]["video"] == "video7010.mp4" and records[0]["answers"] == ["dog"]
    (tmp_path / "mapping.txt").write_text("-4wsuPCjDBc_5_15 vid7010\n")
    records = video_text.open_ended(tmp_path / "msrvtt.json", for_eval=False, mapping=tmp_path / "mapping.txt")
    assert records[0]["video"] == "-4wsuPCjDBc_5_15.avi" and "answers" not in records[0]
    (tmp_path / "mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\n")
    with pytest.raises(FormatError, match="no clip for video_id 7010"):
        video_text.open_ended(tmp_path / "msrvtt.json", for_eval=True, mapping=tmp_path / "mapping.txt")


def test_caption_sets_keep_every_reference_and_their_segments(tmp_path):
    tvc = jsonl(tmp_path / "tvc.jsonl", [{"vid_name": "house_s01e01_seg02_clip_00", "duration": 90.0,
                                          "ts": [12.5, 20.0], "clip_id": 3, "descs": [
                                              {"desc": "House walks in.", "type": "v", "from_retrieval": False,
                                               "desc_id": 1}, {"desc": "He sits.", "type": "v",
                                                               "from_retrieval": False, "desc_id": 2}]}])
    records = video_text.captions(tvc, "tvc", for_eval=True, split=None)
    check(records)
    assert records[0]["answers"] == ["House walks in.", "He sits."] and records[0]["start"] == 12.5
    assert len(video_text.captions(tvc, "tvc", for_eval=False, split=None)) == 2  # one per caption to train on
    youcook = tmp_path / "youcook.json"
    youcook.write_text(json.dumps({"database": {
        "GLd3aX16zBg": {"duration": 241.6, "subset": "validation", "recipe_type": "113", "video_url": "u",
                        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on bread"}]},
        "other": {"duration": 10, "subset": "training", "annotations": [{"segment": [0, 5], "id": 0,
                                                                         "sentence": "x"}]}}}))
    records = video_text.captions(youcook, "youcook2", for_eval=True, split="validation")
    check(records)
    assert [r["video"] for r in records] == ["validation/GLd3aX16zBg.mp4"] and records[0]["end"] == 102.0
    msrvtt = tmp_path / "videodatainfo.json"
    msrvtt.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "train", "category": 9},
                                             {"video_id": "video9", "split": "validate", "category": 1}],
                                  "sentences": [{"video_id": "video9", "caption": "a man sings", "sen_id": 1},
                                                {"video_id": "video9", "caption": "someone sings", "sen_id": 2},
                                                {"video_id": "video0", "caption": "a car", "sen_id": 3}]}))
    records = video_text.captions(msrvtt, "msrvtt", for_eval=True, split="validate")
    assert [(r["video"], r["answers"]) for r in records] == [("video9.mp4", ["a man sings", "someone sings"])]
