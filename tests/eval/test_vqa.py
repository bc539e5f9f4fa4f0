"""VQA accuracy against hand-computed values that follow the official tool, quirks included."""

import json
import subprocess
import sys

import pytest

from vlft.eval.score import ScoreError, score_vqav2
from vlft.eval.vqa import normalize_prediction, normalize_punctuation, vqa_accuracy, vqa_accuracy_official


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"),  # number word, final period
    ("the 1,000", "1000"),  # article dropped; "d,d" makes every punctuation mark vanish without a space
    ("dont", "don't"),  # contractions are restored, not expanded
    ("yes!", "yes"),
    ("left-hand side", "left hand side"),  # no space next to "-": replaced by a space
    ("hot - dog", "hot  dog".replace("  ", " ")),  # a space next to "-": removed, split() folds spaces
    ("3.5", "3.5"),  # a period between digits stays
    ("  Yes\n", "yes"),
    ("An Apple", "apple"),
])
def test_prediction_normalisation(raw, expected):
    assert normalize_prediction(raw) == expected


def test_punctuation_rule_is_decided_per_mark_on_the_original_text():
    # ";" stands next to a space somewhere, so every ";" is dropped; "/" never does, so it becomes a space
    assert normalize_punctuation("x; y;z a/b") == "x yz a b"
    # a digit-comma-digit anywhere makes every mark vanish without a space
    assert normalize_punctuation("1,000 a/b") == "1000 ab"


def test_period_regex_typo_is_kept():
    # "(?!<=\\d)" is a look-ahead, so a period after a digit but before a non-digit still goes
    assert normalize_punctuation("5. ") == "5 "


def test_leave_one_out_accuracy_matches_hand_computation():
    humans = ["yes"] * 7 + ["no"] * 3
    assert vqa_accuracy("yes", humans) == pytest.approx(1.0)
    # leaving out a "yes": 3 "no" remain -> 1; leaving out a "no": 2 remain -> 2/3
    assert vqa_accuracy("no", humans) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert vqa_accuracy("maybe", humans) == 0.0
    one = ["cat"] + ["dog"] * 9
    assert vqa_accuracy("cat", one) == pytest.approx(9 * (1 / 3) / 10)


def test_human_answers_are_only_punctuation_normalised_when_they_disagree():
    # all ten agree: left untouched, so "two" never equals the normalised prediction "2"
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("red/blue", ["red/blue"] * 10) == 0.0  # prediction becomes "red blue"
    # disagreement: punctuation is normalised (so "red/blue" matches), number words are not
    assert vqa_accuracy("red/blue", ["red/blue"] * 5 + ["no"] * 5) == pytest.approx(1.0)
    assert vqa_accuracy("2", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    # the space that replaces "!" is never stripped from a human answer
    assert vqa_accuracy("yes", ["yes!"] * 5 + ["no"] * 5) == 0.0


def test_single_reference_is_normalised_exact_match():
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("circle.", ["circle"]) == 1.0
    assert vqa_accuracy("square", ["circle"]) == 0.0


# Corner cases where the two versions of the official tool disagree, with each one's accuracy worked out
# by hand: (prediction, ten human answers, 2016 accuracy, 2021 accuracy).
PROTOCOL_CASES = [
    # all agree: 2016 lowercases the prediction only; 2021 compares the raw strings
    ("Yes", ["yes"] * 10, 1.0, 0.0),
    # all agree: 2016 turns the prediction into "2" but leaves "two"; 2021 touches neither
    ("two", ["two"] * 10, 0.0, 1.0),
    # disagree: 2016 finds the one "2" (leaving it out: 0, else 1/3 -> 9/30); 2021 maps "two" to "2" (4 of them)
    ("2", ["two"] * 3 + ["2"] + ["no"] * 6, 0.3, 1.0),
    # disagree: only 2021 drops the article from the human answers
    ("dog", ["the dog"] * 4 + ["cat"] * 6, 0.0, 1.0),
    # all agree: 2016 turns "/" into a space in the prediction only
    ("red/blue", ["red/blue"] * 10, 0.0, 1.0),
    # only 2021 strips white space from human answers
    ("yes", ["yes "] * 8 + ["no"] * 2, 0.0, 1.0),
    # plain disagreement: both agree on 7 * 1 + 3 * 2/3
    ("no", ["yes"] * 7 + ["no"] * 3, 0.9, 0.9),
]


@pytest.mark.parametrize("prediction, answers, acc_2016, acc_2021", PROTOCOL_CASES)
def test_each_protocol_matches_hand_computation(prediction, answers, acc_2016, acc_2021):
    assert vqa_accuracy_official(prediction, answers, "2016") == pytest.approx(acc_2016)
    assert vqa_accuracy_official(prediction, answers, "2021") == pytest.approx(acc_2021)


def test_unknown_protocol_is_rejected():
    with pytest.raises(ValueError, match="unknown VQAv2 protocol '2019'; choose one of 2016, 2021"):
        vqa_accuracy_official("yes", ["yes"] * 10, "2019")


def write_official_files(tmp_path, answers_by_q, predictions):
    questions = {"questions": [{"question_id": q, "image_id": 1, "question": "?"} for q in answers_by_q]}
    annotations = {"annotations": [
        {"question_id": q, "image_id": 1, "question_type": qtype, "answer_type": atype,
         "multiple_choice_answer": answers[0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
        for q, (qtype, atype, answers) in answers_by_q.items()]}
    results = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    paths = [tmp_path / "q.json", tmp_path / "a.json", tmp_path / "r.json"]
    for path, obj in zip(paths, (questions, annotations, results), strict=True):
        path.write_text(json.dumps(obj))
    return [str(p) for p in paths]


ANSWERS = {1: ("is the", "yes/no", ["yes"] * 7 + ["no"] * 3),
           2: ("how many", "number", ["2"] * 10),
           3: ("what color", "other", ["red"] * 2 + ["blue"] * 8)}


def test_score_report_in_official_format(tmp_path):
    q, a, r = write_official_files(tmp_path, ANSWERS, {1: "no", 2: "two", 3: "red"})
    report = score_vqav2(q, a, r)
    acc1, acc2, acc3 = 0.9, 1.0, (2 * 1 / 3 + 8 * 2 / 3) / 10
    assert report["overall"] == round(100 * (acc1 + acc2 + acc3) / 3, 2)
    assert report["perAnswerType"] == {"yes/no": 90.0, "number": 100.0, "other": round(100 * acc3, 2)}
    assert report["perQuestionType"]["how many"] == 100.0


def test_score_cli_prints_one_json_object(tmp_path):
    q, a, r = write_official_files(tmp_path, ANSWERS, {1: "yes", 2: "2", 3: "blue"})
    out = subprocess.run([sys.executable, "-m", "vlft.cli", "score", "vqav2", "--questions", q,
                          "--annotations", a, "--results", r], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["overall"] == 100.0 and report["protocol"] == "2016"
    assert set(report) == {"overall", "perAnswerType", "perQuestionType", "protocol"}


@pytest.mark.parametrize("protocol, overall", [("2016", 31.43), ("2021", 84.29)])
def test_score_cli_protocol_choice_changes_the_overall(tmp_path, protocol, overall):
    answers = {i: ("what", "other", case[1]) for i, case in enumerate(PROTOCOL_CASES)}
    predictions = {i: case[0] for i, case in enumerate(PROTOCOL_CASES)}
    q, a, r = write_official_files(tmp_path, answers, predictions)
    out = subprocess.run([sys.executable, "-m", "vlft.cli", "score", "vqav2", "--questions", q, "--annotations", a,
                          "--results", r, "--protocol", protocol], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    # 2016: (1 + 0.3 + 0.9) / 7; 2021: (1 * 5 + 0.9) / 7
    assert report == {"overall": overall, "perAnswerType": {"other": overall},
                      "perQuestionType": {"what": overall}, "protocol": protocol}


def test_results_missing_a_question_are_rejected(tmp_path):
    q, a, r = write_official_files(tmp_path, ANSWERS, {1: "yes", 2: "2"})
    with pytest.raises(ScoreError, match=r"r.json: results must answer exactly the annotated questions \(1 missing"):
        score_vqav2(q, a, r)
    out = subprocess.run([sys.executable, "-m", "vlft.cli", "score", "vqav2", "--questions", q,
                          "--annotations", a, "--results", r], capture_output=True, text=True)
    assert out.returncode == 2 and "1 missing" in out.stderr and "Traceback" not in out.stderr
