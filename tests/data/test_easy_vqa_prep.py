"""data_prep/easy_vqa.py's two-stage splits: stage 1 and stage 2 are different tasks (and, for the ViT, different
images), every record passes vlft's schema, and no question is lost between the LLaVA stages."""

import importlib.util
import json
from pathlib import Path

from vlft.data.records import validate_record

ROOT = Path(__file__).resolve().parents[2]
# loaded under another name: the script's own name is that of the `easy-vqa` package it reads
spec = importlib.util.spec_from_file_location("easy_vqa_prep", ROOT / "data_prep" / "easy_vqa.py")
prep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep)

# Four images: 0 a red circle, 1 a blue triangle (first half), 2 a green rectangle, 3 a gray circle (second half)
QUESTIONS = [
    ("what shape is in the image?", "circle", 0), ("what color is the shape?", "red", 0),
    ("is there a triangle?", "yes", 1), ("what is the color of the triangle?", "blue", 1),
    ("what shape is in the image?", "rectangle", 2), ("is there a green shape?", "yes", 2),
    ("what color is the circle?", "gray", 3), ("is there not a circle?", "no", 3),
]


def test_two_stage_splits_are_different_tasks_on_the_stated_images(tmp_path):
    questions, answers, image_ids = (list(column) for column in zip(*QUESTIONS, strict=True))
    counts = prep.write_split(tmp_path, "train", questions, answers, image_ids, group=True, seed=0)
    read = {name: json.loads((tmp_path / f"{name}.json").read_text())
            for name in ("pretrain_shape_train", "object_train", "pretrain_train", "finetune_train")}

    assert [(r["image"], r["label"]) for r in read["pretrain_shape_train"]] == [("train/0.png", "circle"),
                                                                              ("train/1.png", "triangle")]
    assert [(r["image"], r["label"]) for r in read["object_train"]] == [("train/2.png", "green rectangle"),
                                                                        ("train/3.png", "gray circle")]
    answered = {name: [t["value"] for r in read[name] for t in r["conversations"] if t["from"] == "gpt"]
                for name in ("pretrain_train", "finetune_train")}
    # stage 1: captions of the images whose colour and shape are known, and the colour questions
    assert sorted(answered["pretrain_train"]) == sorted(["a red circle", "a blue triangle", "a green rectangle",
                                                         "a gray circle", "red", "blue", "gray"])
    # stage 2: the shape and yes/no questions, each once
    assert sorted(answered["finetune_train"]) == sorted(["circle", "yes", "rectangle", "yes", "no"])
    for name in ("pretrain_train", "finetune_train"):
        for record in read[name]:
            validate_record(record, f"{name}:{record['id']}")
    assert counts["object_records"] == 2 and counts["pretrain_shape_records"] == 2


def test_test_split_keeps_every_image_for_stage_2(tmp_path):
    questions, answers, image_ids = (list(column) for column in zip(*QUESTIONS, strict=True))
    prep.write_split(tmp_path, "test", questions, answers, image_ids, group=True, seed=0)
    objects = json.loads((tmp_path / "object_test.json").read_text())
    assert [r["label"] for r in objects] == ["red circle", "blue triangle", "green rectangle", "gray circle"]
    finetune = json.loads((tmp_path / "finetune_test.json").read_text())
    assert [r["answers"] for r in finetune] == [["circle"], ["yes"], ["rectangle"], ["yes"], ["no"]]
    assert not (tmp_path / "pretrain_shape_test.json").exists()
