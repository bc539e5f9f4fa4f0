"""data_prep/image_text.py on small files in the official VQAv2, GQA, NLVR2 and Karpathy-COCO schemas:
the records it writes pass vlft's schema, point at the benchmark's image paths and keep every reference."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlft.data.records import validate_record

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "data_prep"))
import image_text  # noqa: E402


def vqav2_files(tmp_path: Path) -> tuple[Path, Path]:
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                 "data_subtype": "val2014",
                 "questions": [{"image_id": 42, "question": "What color is the bus?", "question_id": 420},
                               {"image_id": 7, "question": "How many dogs?", "question_id": 70}]}
    answers = ["red"] * 6 + ["dark red"] * 3 + ["maroon"]
    annotations = {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": [
        {"question_type": "what color is the", "multiple_choice_answer": "red", "image_id": 42,
         "answer_type": "other", "question_id": 420,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]},
        {"question_type": "how many", "multiple_choice_answer": "2", "image_id": 7, "answer_type": "number",
         "question_id": 70, "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1}
                                        for i in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return tmp_path / "q.json", tmp_path / "a.json"


def test_vqav2_eval_records_keep_ten_answers_and_coco_image_names(tmp_path):
    records = image_text.vqav2(*vqav2_files(tmp_path), for_eval=True)
    for i, record in enumerate(records):
        validate_record(record, f"record {i}")
    bus = records[0]
    assert bus["image"] == "val2014/COCO_val2014_000000000042.jpg" and bus["question_id"] == 420
    assert bus["answers"].count("dark red") == 3 and len(bus["answers"]) == 10
    assert bus["conversations"][0]["value"].startswith("<image>\nWhat color is the bus?")
    assert bus["conversations"][1]["value"] == "red" and bus["task"] == "vqa"
    assert "answers" not in image_text.vqav2(*vqav2_files(tmp_path), for_eval=False)[0]


def test_vqav2_question_without_annotation_is_named(tmp_path):
    questions, annotations = vqav2_files(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"] = data["annotations"][:1]
    annotations.write_text(json.dumps(data))
    with pytest.raises(image_text.FormatError, match=rf"{annotations}: no annotation for question_id 70"):
        image_text.vqav2(questions, annotations, for_eval=True)


def test_gqa_balanced_questions_become_records_with_one_answer(tmp_path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps({"20968794": {
        "question": "Is the tray on the left?", "imageId": "n15740", "answer": "yes", "fullAnswer": "Yes, it is.",
        "isBalanced": True, "types": {"structural": "verify", "semantic": "rel", "detailed": "relVerify"},
        "semantic": [], "entailed": [], "equivalent": [], "groups": {}, "annotations": {}}}))
    (record,) = image_text.gqa(path, for_eval=True)
    validate_record(record, "gqa")
    assert (record["image"], record["answers"], record["task"], record["question_id"]) == \
        ("n15740.jpg", ["yes"], "gqa", "20968794")


def test_nlvr2_pairs_point_at_both_images_of_the_split(tmp_path):
    path = tmp_path / "train.json"
    rows = [{"validation": {}, "sentence": "One image shows exactly two dogs.", "left_url": "x", "right_url": "y",
             "writer": "103", "label": "True", "synset": "n02", "query": "dogs", "identifier": "train-10171-0-0",
             "extra_validations": {}, "directory": 43},
            {"sentence": "There are no birds.", "label": "False", "identifier": "dev-850-1-3"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, dev = image_text.nlvr2(path, for_eval=True)
    for record in (train, dev):
        validate_record(record, "nlvr2")
    assert train["image"] == ["train/43/train-10171-0-img0.png", "train/43/train-10171-0-img1.png"]
    assert dev["image"] == ["dev/dev-850-1-img0.png", "dev/dev-850-1-img1.png"]
    assert (train["answers"], dev["answers"]) == (["true"], ["false"])
    assert train["conversations"][0]["value"].count("<image>") == 2
    path.write_text(json.dumps({**rows[1], "label": "maybe"}) + "\n")
    with pytest.raises(image_text.FormatError, match=r"line 1: label must be True or False, got 'maybe'"):
        image_text.nlvr2(path, for_eval=False)


def karpathy(tmp_path: Path) -> Path:
    def image(cocoid, split, captions):
        return {"filepath": "val2014", "filename": f"COCO_val2014_{cocoid:012d}.jpg", "imgid": cocoid,
                "split": split, "cocoid": cocoid, "sentrids": [],
                "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": cocoid} for c in captions]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": [
        image(1, "train", ["A man rides a horse.", "A rider on a horse."]), image(2, "restval", ["A cat sleeps."]),
        image(3, "test", ["Two dogs play in snow.", "Dogs in the snow.", "A pair of dogs outside."])]}))
    return path


def test_karpathy_captions_train_per_sentence_and_evaluate_per_image(tmp_path):
    path = karpathy(tmp_path)
    train = image_text.coco_caption(path, "train", for_eval=False)
    assert [r["conversations"][1]["value"] for r in train] == ["A man rides a horse.", "A rider on a horse.",
                                                               "A cat sleeps."]
    assert len(image_text.coco_caption(path, "train", for_eval=False, restval=False)) == 2
    out, gt = tmp_path / "test.json", tmp_path / "gt.json"
    subprocess.run([sys.executable, str(ROOT / "data_prep" / "image_text.py"), "coco-caption", "--karpathy",
                    str(path), "--split", "test", "--eval", "--out", str(out), "--coco-annotations", str(gt)],
                   check=True, capture_output=True)
    (record,) = json.loads(out.read_text())
    validate_record(record, "caption")
    assert record["image"] == "val2014/COCO_val2014_000000000003.jpg" and len(record["answers"]) == 3
    coco = json.loads(gt.read_text())
    assert coco["images"] == [{"id": 3}] and [a["caption"] for a in coco["annotations"]] == record["answers"]
