"""Convert easy-VQA (the `easy-vqa` package) to LLaVA conversation records and shape labels.

    python data_prep/easy_vqa.py --out data/easy_vqa

Writes train.json, test.json and images/{train,test}/<id>.png under --out. Training questions
about the same image become one multi-turn conversation (as LLaVA-665k does for VQAv2),
unless --no-group; test records hold one question each, with `question_id` and `answers`.
Also writes shape_train.json / shape_test.json, image classification records
`{"id", "image", "label"}` whose label is the image's shape, and caption_train.json /
caption_test.json, captioning records ("a red triangle", with three phrasings as references)
for the images whose shape and colour the questions and answers establish. For two-stage training
(a pretrained base, then a different task): pretrain_train.json (captions and the colour questions) and
finetune_{train,test}.json (the shape and yes/no questions) for LLaVA; pretrain_shape_train.json (the shapes of
the first half of the training images) and object_{train,test}.json ("red circle": colour and shape, on the
other half) for the ViT.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."


def question_turn(question: str, with_image: bool) -> dict:
    prefix = "<image>\n" if with_image else ""
    return {"from": "human", "value": f"{prefix}{question}\n{SHORT_ANSWER_PROMPT}"}


def grouped_records(questions, answers, image_ids, split: str, seed: int) -> list[dict]:
    by_image = defaultdict(list)
    for q, a, image_id in zip(questions, answers, image_ids, strict=True):
        by_image[image_id].append((q, a))
    rng = random.Random(seed)
    records = []
    for image_id in sorted(by_image):
        pairs = by_image[image_id]
        rng.shuffle(pairs)
        turns = []
        for k, (q, a) in enumerate(pairs):
            turns += [question_turn(q, with_image=k == 0), {"from": "gpt", "value": a}]
        records.append({"id": f"easyvqa-{split}-img{image_id}", "image": f"{split}/{image_id}.png",
                        "conversations": turns})
    return records


def single_records(questions, answers, image_ids, split: str) -> list[dict]:
    return [{"id": f"easyvqa-{split}-{i}", "question_id": i, "image": f"{split}/{image_id}.png",
             "conversations": [question_turn(q, True), {"from": "gpt", "value": a}], "answers": [a]}
            for i, (q, a, image_id) in enumerate(zip(questions, answers, image_ids, strict=True))]


SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


def _mentioned(question: str, words: tuple[str, ...]) -> str | None:
    return next((w for w in words if f" {w}" in f" {question.rstrip('?')} "), None)


def image_facts(questions, answers, image_ids) -> dict[int, dict[str, str]]:
    """{image_id: {"shape", "color"}} from what the questions and answers establish about each image."""
    facts: dict[int, dict[str, str]] = defaultdict(dict)
    for question, answer, image_id in zip(questions, answers, image_ids, strict=True):
        shape, color = _mentioned(question, SHAPES), _mentioned(question, COLORS)
        if answer in SHAPES:
            facts[image_id]["shape"] = answer
            if color:
                facts[image_id]["color"] = color
        elif answer in COLORS:
            facts[image_id]["color"] = answer
            if shape:
                facts[image_id]["shape"] = shape
        else:  # yes/no about a shape or a colour being present, maybe negated
            negated = " not " in f" {question} " or question.startswith("is no ")
            if (answer == "yes") != negated:
                if shape:
                    facts[image_id]["shape"] = shape
                if color:
                    facts[image_id]["color"] = color
    return facts


def label_records(facts: dict[int, dict[str, str]], image_ids, split: str, fact: str) -> tuple[list[dict], int]:
    """Classification records for images whose ``fact`` ("shape" or "color") is known, and how many images had
    none."""
    records = [{"id": f"easyvqa-{split}-img{i}", "image": f"{split}/{i}.png", "label": facts[i][fact]}
               for i in sorted(facts) if fact in facts[i]]
    return records, len(set(image_ids)) - len(records)


CAPTION_PROMPT = "Describe the image briefly."


def caption_references(color: str, shape: str) -> list[str]:
    return [f"a {color} {shape}", f"a {shape} that is {color}", f"one {color} {shape}"]


def caption_records(facts: dict[int, dict[str, str]], split: str) -> list[dict]:
    """One captioning record per image of known shape and colour; the first reference is the target."""
    records = []
    for i in sorted(facts):
        if {"shape", "color"} <= facts[i].keys():
            refs = caption_references(facts[i]["color"], facts[i]["shape"])
            records.append({"id": f"easyvqa-{split}-caption{i}", "question_id": f"{split}-caption{i}",
                            "task": "caption", "image": f"{split}/{i}.png", "answers": refs,
                            "conversations": [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
                                              {"from": "gpt", "value": refs[0]}]})
    return records


def two_stage_labels(facts: dict[int, dict[str, str]], image_ids, split: str) -> dict[str, list[dict]]:
    """The ViT's two stages on different tasks and different images: stage 1 (configs/vit_pretrain_tiny.yaml)
    classifies the shape of the first half of the training images, stage 2
    (configs/vit_dora_from_pretrained_tiny.yaml) names colour and shape together ("red circle", 24 labels) on
    the other half, tested on the test images."""
    half = len(set(image_ids)) // 2 if split == "train" else 0
    objects = [{"id": f"easyvqa-{split}-img{i}", "image": f"{split}/{i}.png",
                "label": f"{facts[i]['color']} {facts[i]['shape']}"}
               for i in sorted(facts) if i >= half and {"shape", "color"} <= facts[i].keys()]
    if split != "train":
        return {f"object_{split}": objects}
    shapes, _ = label_records({i: f for i, f in facts.items() if i < half}, image_ids, split, "shape")
    return {"pretrain_shape_train": shapes, "object_train": objects}


def two_stage_records(questions, answers, image_ids, captions: list[dict], split: str, seed: int) -> dict:
    """LLaVA's two stages on different tasks: stage 1 (configs/llava_pretrain_tiny.yaml) learns captions and the
    colour questions, stage 2 (configs/llava_dora_from_pretrained_tiny.yaml) the shape and yes/no questions."""
    color = [k for k, a in enumerate(answers) if a in COLORS]
    other = [k for k, a in enumerate(answers) if a not in COLORS]

    def pick(indices):
        return [questions[k] for k in indices], [answers[k] for k in indices], [image_ids[k] for k in indices]

    if split == "train":
        return {"pretrain": captions + grouped_records(*pick(color), split, seed),
                "finetune": grouped_records(*pick(other), split, seed)}
    return {"finetune": single_records(*pick(other), split)}


def copy_images(paths: dict[int, str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for image_id, src in tqdm(paths.items(), desc=f"images -> {dest}", unit="img"):
        target = dest / f"{image_id}.png"
        if not target.exists():
            shutil.copyfile(src, target)


def import_easy_vqa():
    """The `easy-vqa` package (its data ships inside it); this script's own name would shadow it."""
    here = str(Path(__file__).resolve().parent)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in ("", here) and Path(p or ".").resolve() != Path(here)]
    sys.modules.pop("easy_vqa", None)
    try:
        return importlib.import_module("easy_vqa")
    finally:
        sys.path[:] = saved


def write_split(out: Path, split: str, questions, answers, image_ids, group: bool, seed: int) -> dict:
    """Every record file of one split; returns its counts."""
    if split == "train" and group:
        records = grouped_records(questions, answers, image_ids, split, seed)
    else:
        records = single_records(questions, answers, image_ids, split)
    facts = image_facts(questions, answers, image_ids)
    shapes, unknown = label_records(facts, image_ids, split, "shape")
    captions = caption_records(facts, split)
    files = {split: records, f"shape_{split}": shapes, f"caption_{split}": captions}
    files |= two_stage_labels(facts, image_ids, split)
    for stage, stage_records in two_stage_records(questions, answers, image_ids, captions, split, seed).items():
        files[f"{stage}_{split}"] = stage_records
    for name, content in files.items():
        (out / f"{name}.json").write_text(json.dumps(content))
    counts = {"questions": len(questions), "images": len(set(image_ids)), "images_without_a_known_shape": unknown}
    return counts | {("records" if name == split else f"{name.removesuffix('_' + split)}_records"): len(content)
                     for name, content in files.items()}


def prepare(out: Path, group: bool = True, seed: int = 0) -> dict:
    easy_vqa = import_easy_vqa()
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, get_questions, get_paths in (
            ("train", easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
            ("test", easy_vqa.get_test_questions, easy_vqa.get_test_image_paths)):
        copy_images(get_paths(), out / "images" / split)
        summary[split] = write_split(out, split, *get_questions(), group=group, seed=seed)
    summary["answers"] = sorted(easy_vqa.get_answers())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/easy_vqa", help="output directory")
    parser.add_argument("--no-group", action="store_true", help="one training record per question")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question order within a conversation")
    args = parser.parse_args(argv)
    summary = prepare(Path(args.out), group=not args.no_group, seed=args.seed)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
