"""Captioning metrics exactly as the COCO caption evaluation (pycocoevalcap) computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr (the coco-caption CIDEr-D: clipped counts, length penalty)
over captions tokenised by the PTB tokenizer. The tokenizer and METEOR run on Java.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlft.eval.score import ScoreError, read_json

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def require_java() -> None:
    if shutil.which("java") is None:
        raise ScoreError("captioning metrics need Java (the PTB tokenizer and METEOR are Java programs): "
                         "install a Java runtime, e.g. `apt-get install default-jre-headless`, and retry")


def caption_scores(references: dict, candidates: dict[object, str]) -> dict[str, float]:
    """Corpus scores for ``candidates`` (id -> caption) against ``references`` (id -> [captions])."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
    res = tokenizer.tokenize({k: [{"caption": candidates[k]}] for k in references})
    scores = {}
    bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update(zip(METRICS[:4], bleu, strict=True))
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        scores[name], _ = scorer.compute_score(gts, res)
    return {name: float(scores[name]) for name in METRICS}


def _caption_rows(rows, path: Path, what: str) -> list[dict]:
    if not isinstance(rows, list):
        raise ScoreError(f"{path}: expected {what} as a JSON list of {{'image_id', 'caption'}}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise ScoreError(f"{path}: {what} entry {i} must be {{'image_id': ..., 'caption': str}}, got {row!r}")
    return rows


def score_coco_caption(annotations_path: str, results_path: str) -> dict[str, float]:
    """COCO caption files: annotations {"images", "annotations": [{image_id, id, caption}]}, results a list
    of {image_id, caption} with one caption for every annotated image."""
    annotations = read_json(annotations_path, "annotations")
    if not isinstance(annotations, dict) or "annotations" not in annotations or "images" not in annotations:
        raise ScoreError(f"{annotations_path}: expected an object with 'images' and 'annotations' lists")
    references: dict = {}
    for row in _caption_rows(annotations["annotations"], Path(annotations_path), "annotations"):
        references.setdefault(row["image_id"], []).append(row["caption"])
    candidates: dict = {}
    for row in _caption_rows(read_json(results_path, "results"), Path(results_path), "results"):
        if row["image_id"] in candidates:
            raise ScoreError(f"{results_path}: image_id {row['image_id']!r} has more than one caption")
        candidates[row["image_id"]] = row["caption"]
    missing, extra = references.keys() - candidates.keys(), candidates.keys() - references.keys()
    if missing or extra:
        raise ScoreError(f"{results_path}: results must caption exactly the annotated images ({len(missing)} "
                         f"missing, e.g. {sorted(missing)[:3]}; {len(extra)} unknown, e.g. {sorted(extra)[:3]})")
    return caption_scores(references, candidates)
