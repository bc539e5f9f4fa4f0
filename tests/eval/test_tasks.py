"""Scoring a mixed eval set: each record by its task's metric, with hand-computed values."""

import shutil

import pytest

from vlft.eval.caption import caption_scores
from vlft.eval.tasks import score_by_task

BUS = ["red"] * 6 + ["dark red"] * 3 + ["maroon"]


def test_each_task_gets_its_own_metric():
    tasks = ["vqa", "vqa", "gqa", "gqa", "gqa", "nlvr2", "nlvr2"]
    predictions = ["red", "dark red", "Yes.", "left", "table", "true", "True"]
    refs = [BUS, BUS, ["yes"], ["right"], ["table"], ["true"], ["false"]]
    metrics = score_by_task(tasks, predictions, refs)
    # "dark red": 3 of the 10 humans; leave-one-out over the 10 nine-answer subsets gives 1 for the 7 that
    # keep all three and 2/3 for the 3 that drop one: (7 + 3 * 2/3) / 10 = 0.9
    assert metrics["vqa_accuracy"] == pytest.approx((100 + 90) / 2)
    assert metrics["num_questions"] == 2 and metrics["majority_answer"] == "red"
    assert metrics["gqa_accuracy"] == pytest.approx(200 / 3, abs=0.01) and metrics["gqa_num_questions"] == 3
    assert metrics["nlvr2_accuracy"] == 50.0 and metrics["nlvr2_num_examples"] == 2
    assert not any(k.startswith("caption_") for k in metrics)


@pytest.mark.skipif(shutil.which("java") is None, reason="captioning metrics need Java")
def test_caption_rows_are_scored_with_pycocoevalcap_on_their_own():
    captions = ["a red triangle", "a blue circle", "one green square"]
    refs = [["a red triangle", "a triangle that is red"], ["a blue circle"], ["a green rectangle", "one green box"]]
    metrics = score_by_task(["caption", "vqa", "caption", "caption"], [captions[0], "red", *captions[1:]],
                            [refs[0], BUS, *refs[1:]])
    expected = caption_scores(dict(enumerate(refs)), dict(enumerate(captions)))
    for name, value in expected.items():
        assert metrics[f"caption_{name}"] == pytest.approx(value, abs=1e-4)
    assert metrics["caption_num_images"] == 3 and metrics["vqa_accuracy"] == 100.0


def test_video_tasks_score_open_ended_and_multiple_choice_accuracy_per_category():
    tasks = ["video_qa", "video_qa", "video_qa", "video_mc", "video_mc"]
    predictions = ["Left.", "two", "red", "left", "circle"]
    refs = [["left"], ["three"], ["red"], ["right"], ["circle"]]
    categories = ["direction", "count", "control", "direction", "order"]
    metrics = score_by_task(tasks, predictions, refs, categories)
    assert metrics["video_qa_accuracy"] == round(100 * 2 / 3, 2) and metrics["video_qa_num_questions"] == 3
    assert (metrics["video_qa_accuracy_direction"], metrics["video_qa_accuracy_count"],
            metrics["video_qa_accuracy_control"]) == (100.0, 0.0, 100.0)
    assert metrics["video_mc_accuracy"] == 50.0 and metrics["video_mc_accuracy_direction"] == 0.0
    assert "vqa_accuracy" not in metrics
