"""`vlft score coco-caption` gives pycocoevalcap's numbers on COCO-format files (Java runs the PTB tokenizer and
METEOR)."""

import json

import pytest

from vlft.cli import main
from vlft.eval import caption

REFERENCES = {
    1: ["a red circle on a white background", "a red round shape", "the circle is red",
        "a small red circle", "red circle in the middle"],
    2: ["a blue square on a white background", "a blue box", "the square is blue", "a blue rectangle",
        "blue square in the middle"],
    3: ["a green triangle", "a triangle that is green", "green triangle on white", "a green shape with three sides",
        "the triangle is green"],
}


def write_files(tmp_path, candidates: dict[int, str]):
    annotations = {"images": [{"id": i} for i in REFERENCES],
                   "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c}
                                   for i, refs in REFERENCES.items() for k, c in enumerate(refs)]}
    results = [{"image_id": i, "caption": c} for i, c in candidates.items()]
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    (tmp_path / "results.json").write_text(json.dumps(results))
    return str(tmp_path / "captions.json"), str(tmp_path / "results.json")


def score(tmp_path, candidates, capsys) -> dict:
    annotations, results = write_files(tmp_path, candidates)
    assert main(["score", "coco-caption", "--annotations", annotations, "--results", results]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def reference_scores(annotations: str, results: str, monkeypatch) -> dict:
    """pycocoevalcap's own COCOEvalCap on the same files (SPICE left out: it downloads Stanford models)."""
    from pycocoevalcap import eval as coco_eval
    from pycocotools.coco import COCO

    class NoSpice:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    coco = COCO(annotations)
    evaluator = coco_eval.COCOEvalCap(coco, coco.loadRes(results))
    evaluator.evaluate()
    return {k: v for k, v in evaluator.eval.items() if k != "SPICE"}


def test_scores_equal_pycocoevalcap_on_the_same_files(tmp_path, capsys, monkeypatch):
    candidates = {1: "a red circle", 2: "a blue square on white", 3: "a green shape"}
    got = score(tmp_path, candidates, capsys)
    assert set(got) == set(caption.METRICS)
    want = reference_scores(str(tmp_path / "captions.json"), str(tmp_path / "results.json"), monkeypatch)
    assert got == pytest.approx(want, abs=1e-6)
    assert 0 < got["Bleu_4"] < got["Bleu_1"] < 1


def test_a_caption_equal_to_a_reference_scores_full_bleu(tmp_path, capsys):
    got = score(tmp_path, {i: refs[0] for i, refs in REFERENCES.items()}, capsys)
    assert got["Bleu_1"] == pytest.approx(1.0, abs=1e-6) and got["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_missing_java_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)
    annotations, results = write_files(tmp_path, {i: "a shape" for i in REFERENCES})
    assert main(["score", "coco-caption", "--annotations", annotations, "--results", results]) == 2
    assert "captioning metrics need Java" in capsys.readouterr().err


def test_results_must_caption_every_annotated_image(tmp_path, capsys):
    annotations, results = write_files(tmp_path, {1: "a red circle"})
    assert main(["score", "coco-caption", "--annotations", annotations, "--results", results]) == 2
    assert "2 missing, e.g. [2, 3]" in capsys.readouterr().err
