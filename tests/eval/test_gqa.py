import json

import pytest

from vlft.cli import main
from vlft.eval.gqa import gqa_accuracy, normalize_gqa


def question(answer: str, structural: str, semantic: str, balanced: bool = True) -> dict:
    return {"imageId": "n1", "question": "?", "answer": answer, "fullAnswer": answer, "isBalanced": balanced,
            "types": {"structural": structural, "semantic": semantic, "detailed": "x"}}


def test_gqa_report_matches_hand_counts(tmp_path, capsys):
    questions = {"1": question("red", "query", "attr"), "2": question("table", "query", "obj"),
                 "3": question("yes", "verify", "rel"), "4": question("no", "logical", "obj"),
                 "5": question("cat", "query", "cat", balanced=False)}  # unbalanced: not scored, needs no prediction
    results = [{"questionId": "1", "prediction": " Red."}, {"questionId": "2", "prediction": "the table"},
               {"questionId": "3", "prediction": "yes"}, {"questionId": "4", "prediction": "No"}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["score", "gqa", "--questions", str(tmp_path / "q.json"), "--results", str(tmp_path / "r.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"accuracy": 75.0, "binary": 100.0, "open": 50.0, "num_questions": 4,
                      "perStructuralType": {"logical": 100.0, "query": 50.0, "verify": 100.0},
                      "perSemanticType": {"attr": 100.0, "obj": 50.0, "rel": 100.0}}


def test_gqa_missing_prediction_is_named(tmp_path, capsys):
    (tmp_path / "q.json").write_text(json.dumps({"7": question("red", "query", "attr")}))
    (tmp_path / "r.json").write_text("[]")
    assert main(["score", "gqa", "--questions", str(tmp_path / "q.json"), "--results", str(tmp_path / "r.json")]) == 2
    assert "1 balanced question(s) have no prediction, e.g. ['7']" in capsys.readouterr().err


@pytest.mark.parametrize("prediction, answer, same", [("Yes.", "yes", True), ("  left ", "left", True),
                                                      ("a dog", "dog", False), ("u.s.", "u.s", True)])
def test_gqa_normalisation(prediction, answer, same):
    assert (normalize_gqa(prediction) == normalize_gqa(answer)) is same
    assert gqa_accuracy([prediction], [answer]) == (100.0 if same else 0.0)
