"""`vlft predict <run_or_merged_dir>`: answers to questions about one's own images and videos, printed."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.data.records import DataError
from vlft.models import get_family
from vlft.serve.loading import answers_in_text, directory_kind, load_served, served_config
from vlft.serve.predictor import Predictor, check_visual


def format_labels(labels: list[dict]) -> str:
    """`circle 0.7431, rectangle 0.2569`: a classifier's top labels with their probabilities."""
    return ", ".join(f"{entry['label']} {entry['probability']:.4f}" for entry in labels)


def check_arguments(args, in_text: bool) -> None:
    """What was asked makes sense for this model (one line otherwise, before the model is loaded)."""
    if args.input and (args.image or args.video or args.question):
        raise DataError("give either --input RECORDS or --image/--video with --question, not both", reason=None)
    if not args.input and not (args.image or args.video):
        raise DataError("nothing to predict: give --image PATH or --video PATH (and --question TEXT), or --input "
                        "RECORDS", reason=None)
    if args.image and args.video:
        raise DataError("give --image or --video, not both: a question is about one of them", reason=None)
    if not in_text and args.video:
        raise DataError(f"{args.dir}: an image classifier takes --image, not --video", reason=None)
    if in_text and not args.input and not args.question:
        raise DataError("give the --question to ask about the image or video", reason=None)
    if args.top_k < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise DataError("--top-k and --max-new-tokens must be at least 1", reason=None)
    if args.input and not Path(args.input).is_file():
        raise DataError(f"--input: records file not found: {args.input}", reason=None)


def run_predict(args) -> int:
    """Print one line per prediction: the answer (text models) or the top labels with their probabilities
    (classifiers); with --json, one JSON object per line."""
    cfg = served_config(args.dir, directory_kind(args.dir))
    check_arguments(args, answers_in_text(get_family(cfg.model.family)))
    if not args.input:
        check_visual(cfg.data.video, image=args.image, video=args.video)
    predictor = Predictor(load_served(args.dir, args.device))
    try:
        if args.input:
            folder = args.image_folder or cfg.data.image_folder
            predictions = predictor.predict_file(args.input, folder, args.max_new_tokens, args.top_k)
        else:
            record = predictor.record(args.question or "", args.image, args.video, args.task)
            given = {"image": args.image} if args.image else {"video": args.video}
            predictions = [{**given, **({"question": args.question} if args.question else {}),
                            **_without_ids(p)} for p in predictor.predict([record], args.max_new_tokens, args.top_k)]
    finally:
        predictor.close()
    for prediction in predictions:
        print(json.dumps(prediction) if args.json else _plain(prediction, named=bool(args.input)), flush=True)
    return 0


def _without_ids(prediction: dict) -> dict:
    return {k: v for k, v in prediction.items() if k not in ("id", "question_id")}


def _plain(prediction: dict, named: bool) -> str:
    text = prediction["answer"] if "answer" in prediction else format_labels(prediction["labels"])
    if not named:
        return text
    return f"{prediction.get('question_id', prediction.get('id'))}\t{text}"
