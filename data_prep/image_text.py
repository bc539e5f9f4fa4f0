"""Convert the official image-text benchmark files to vlft records (LLaVA conversations with a `task`).

    python data_prep/image_text.py vqav2 --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --out data/vqav2/val.json --eval
    python data_prep/image_text.py gqa --questions testdev_balanced_questions.json --out data/gqa/testdev.json --eval
    python data_prep/image_text.py nlvr2 --annotations dev.json --out data/nlvr2/dev.json --eval
    python data_prep/image_text.py coco-caption --karpathy dataset_coco.json --split test --out data/coco/test.json \\
        --eval --coco-annotations data/coco/test_gt.json

Image paths in the records are relative to the benchmark's image root (data.image_folder):
VQAv2 `<data_subtype>/COCO_<data_subtype>_<image_id:012d>.jpg`, GQA `<imageId>.jpg`, NLVR2
`<split>/[<directory>/]<identifier stem>-img0.png` and `-img1.png`, COCO `<filepath>/<filename>`.
Training records (default) hold one question and its answer (VQAv2: the most common human answer);
with --eval each record also keeps `question_id` and every reference (`answers`: VQAv2's ten
answers, GQA's and NLVR2's one, all of an image's captions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHORT_ANSWER = "Answer the question using a single word or phrase."
NLVR2_PROMPT = "Is this statement about the two images true or false?"
CAPTION_PROMPT = "Describe the image briefly."


class FormatError(ValueError):
    """An input file is not in the benchmark's official format; the message names the file and field."""


def _load(path: str | Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FormatError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON at line {err.lineno}: {err.msg}") from None


def _field(row: dict, key: str, path, where: str):
    if not isinstance(row, dict) or key not in row:
        raise FormatError(f"{path} {where}: missing field '{key}'")
    return row[key]


def _record(task: str, rid, images: list[str], prompt: str, answer: str, answers: list[str] | None) -> dict:
    placeholders = "<image>\n" * len(images)
    record = {"id": str(rid), "task": task, "image": images[0] if len(images) == 1 else images,
              "conversations": [{"from": "human", "value": f"{placeholders}{prompt}"},
                                {"from": "gpt", "value": answer}]}
    if answers is not None:
        record.update(question_id=rid, answers=answers)
    return record


def vqav2(questions_path: str, annotations_path: str, for_eval: bool) -> list[dict]:
    questions = _load(questions_path, "VQAv2 questions")
    annotations = _load(annotations_path, "VQAv2 annotations")
    subtype = _field(questions, "data_subtype", questions_path, "top level")
    by_id = {_field(a, "question_id", annotations_path, f"annotation {i}"): a
             for i, a in enumerate(_field(annotations, "annotations", annotations_path, "top level"))}
    records = []
    for i, q in enumerate(_field(questions, "questions", questions_path, "top level")):
        qid = _field(q, "question_id", questions_path, f"question {i}")
        if qid not in by_id:
            raise FormatError(f"{annotations_path}: no annotation for question_id {qid} of {questions_path}")
        ann = by_id[qid]
        image = f"{subtype}/COCO_{subtype}_{_field(q, 'image_id', questions_path, f'question {i}'):012d}.jpg"
        answers = [a["answer"] for a in _field(ann, "answers", annotations_path, f"question_id {qid}")]
        prompt = f"{_field(q, 'question', questions_path, f'question {i}')}\n{SHORT_ANSWER}"
        records.append(_record("vqa", qid, [image], prompt, ann["multiple_choice_answer"],
                               answers if for_eval else None))
    return records


def gqa(questions_path: str, for_eval: bool) -> list[dict]:
    questions = _load(questions_path, "GQA questions")
    if not isinstance(questions, dict):
        raise FormatError(f"{questions_path}: expected GQA's object of question id -> question")
    records = []
    for qid, q in questions.items():
        answer = _field(q, "answer", questions_path, f"question {qid}")
        prompt = f"{_field(q, 'question', questions_path, f'question {qid}')}\n{SHORT_ANSWER}"
        image = f"{_field(q, 'imageId', questions_path, f'question {qid}')}.jpg"
        records.append(_record("gqa", qid, [image], prompt, answer, [answer] if for_eval else None))
    return records


def nlvr2(annotations_path: str, for_eval: bool) -> list[dict]:
    records = []
    lines = Path(annotations_path).read_text().splitlines() if Path(annotations_path).is_file() else None
    if lines is None:
        raise FormatError(f"NLVR2 annotations file not found: {annotations_path}")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{annotations_path} line {line_no}: not valid JSON: {err.msg}") from None
        identifier = _field(row, "identifier", annotations_path, f"line {line_no}")
        label = _field(row, "label", annotations_path, f"line {line_no}")
        if label not in ("True", "False"):
            raise FormatError(f"{annotations_path} line {line_no}: label must be True or False, got {label!r}")
        stem = identifier.rsplit("-", 1)[0]  # train-10171-0-0 -> train-10171-0 (the image pair)
        folder = "/".join([identifier.split("-")[0], *([str(row["directory"])] if "directory" in row else [])])
        images = [f"{folder}/{stem}-img0.png", f"{folder}/{stem}-img1.png"]
        prompt = f"{_field(row, 'sentence', annotations_path, f'line {line_no}')}\n{NLVR2_PROMPT}"
        answer = label.lower()
        records.append(_record("nlvr2", identifier, images, prompt, answer, [answer] if for_eval else None))
    return records


def coco_caption(karpathy_path: str, split: str, for_eval: bool, restval: bool = True) -> list[dict]:
    data = _load(karpathy_path, "Karpathy COCO split")
    splits = {split, "restval"} if split == "train" and restval else {split}
    records = []
    for i, image in enumerate(_field(data, "images", karpathy_path, "top level")):
        if _field(image, "split", karpathy_path, f"image {i}") not in splits:
            continue
        path = f"{_field(image, 'filepath', karpathy_path, f'image {i}')}/{image['filename']}"
        captions = [s["raw"].strip() for s in _field(image, "sentences", karpathy_path, f"image {i}")]
        image_id = image.get("cocoid", image.get("imgid", i))
        if for_eval:
            records.append(_record("caption", image_id, [path], CAPTION_PROMPT, captions[0], captions))
        else:
            records += [_record("caption", f"{image_id}-{k}", [path], CAPTION_PROMPT, c, None)
                        for k, c in enumerate(captions)]
    return records


def coco_annotations(records: list[dict]) -> dict:
    """COCO caption ground truth of caption eval records, the input of `vlft score coco-caption`."""
    annotations = [{"image_id": r["question_id"], "id": n, "caption": c}
                   for n, (r, c) in enumerate((r, c) for r in records for c in r["answers"])]
    return {"images": [{"id": r["question_id"]} for r in records], "annotations": annotations}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    for name in ("vqav2", "gqa", "nlvr2", "coco-caption"):
        task = sub.add_parser(name)
        task.add_argument("--out", required=True, help="output JSON file of records")
        task.add_argument("--eval", action="store_true", help="keep question ids and every reference")
        if name in ("vqav2", "gqa"):
            task.add_argument("--questions", required=True)
        if name in ("vqav2", "nlvr2"):
            task.add_argument("--annotations", required=True)
        if name == "coco-caption":
            task.add_argument("--karpathy", required=True, help="dataset_coco.json")
            task.add_argument("--split", required=True, choices=["train", "val", "test"])
            task.add_argument("--no-restval", action="store_true", help="train split without restval")
            task.add_argument("--coco-annotations", help="also write COCO-format ground truth here (--eval)")
    args = parser.parse_args(argv)
    try:
        if args.task == "vqav2":
            records = vqav2(args.questions, args.annotations, args.eval)
        elif args.task == "gqa":
            records = gqa(args.questions, args.eval)
        elif args.task == "nlvr2":
            records = nlvr2(args.annotations, args.eval)
        else:
            records = coco_caption(args.karpathy, args.split, args.eval, restval=not args.no_restval)
    except FormatError as err:
        raise SystemExit(f"error: {err}") from None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records))
    if getattr(args, "coco_annotations", None):
        if not args.eval:
            raise SystemExit("error: --coco-annotations needs --eval (the references of each image)")
        Path(args.coco_annotations).write_text(json.dumps(coco_annotations(records)))
    print(json.dumps({"task": args.task, "records": len(records), "out": args.out}))


if __name__ == "__main__":
    main()
