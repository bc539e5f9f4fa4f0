"""`vlft predict`: the tiny LLaVA, VL-BART and ViT, from their run directory (adapter on the base model) and from
their `vlft merge` output, answer the eval set's questions exactly as the run's evaluation did
(predictions.json); a bad image, a file that is not an image and a directory that is neither a run nor a merged
model are refused with one line naming them, exit status 2."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.serve.conftest import FAMILIES
from vlft.cli import main

# Eval questions asked one at a time: (question_id, image, question), as the shapes eval set has them.
SINGLE = [(0, "0.png", "what shape is this?"), (3, "1.png", "what color is the shape?")]


def predict_json(capsys, *args) -> list[dict]:
    assert main(["predict", *map(str, args), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("source", ["run", "merged"])
@pytest.mark.parametrize("family", FAMILIES)
def test_predict_gives_the_answers_of_the_runs_evaluation(family, source, served, capsys):
    paths = served[family]
    expected = json.loads((paths["run"] / "predictions.json").read_text())
    got = predict_json(capsys, paths[source], "--input", paths["eval"], "--image-folder", paths["images"])
    if family == "vit":
        assert [(p["id"], p["labels"][0]["label"]) for p in got] == [(e["id"], e["prediction"]) for e in expected]
        for prediction in got:  # every label (2 < --top-k 5), most probable first
            probabilities = [entry["probability"] for entry in prediction["labels"]]
            assert sorted(entry["label"] for entry in prediction["labels"]) == ["circle", "rectangle"]
            assert probabilities == sorted(probabilities, reverse=True)
            assert sum(probabilities) == pytest.approx(1, abs=1e-3)
        assert main(["predict", str(paths[source]), "--image", str(paths["images"] / "0.png")]) == 0
        first = got[0]["labels"]
        assert capsys.readouterr().out == ", ".join(f"{e['label']} {e['probability']:.4f}" for e in first) + "\n"
        return
    assert [(p["question_id"], p["answer"]) for p in got] == [(e["question_id"], e["answer"]) for e in expected]
    by_id = {e["question_id"]: e["answer"] for e in expected}
    for question_id, image, question in SINGLE:
        assert main(["predict", str(paths[source]), "--image", str(paths["images"] / image),
                     "--question", question]) == 0
        assert capsys.readouterr().out == by_id[question_id] + "\n"


def test_a_merged_model_keeps_its_runs_config(served):
    for family in FAMILIES:
        merged, run = served[family]["merged"], served[family]["run"]
        assert (merged / "vlft_config.yaml").read_text() == (run / "config.yaml").read_text()


def test_bad_inputs_are_one_line_naming_them_with_exit_status_2(served, tmp_path, capsys):
    run, image = served["llava"]["run"], served["llava"]["images"] / "0.png"
    missing, notes = tmp_path / "missing.png", tmp_path / "notes.png"
    notes.write_text("not an image")
    cases = [
        ([run, "--image", missing, "--question", "what?"], re.escape(f"error: image not found: {missing}")),
        ([run, "--image", notes, "--question", "what?"], re.escape(f"error: cannot read image {notes}: ") + ".+"),
        ([tmp_path, "--image", image, "--question", "what?"],
         re.escape(f"error: {tmp_path}: neither a finished vlft run (config.yaml beside the trained adapter or "
                   "weights) nor a model written by `vlft merge` (vlft_merge.json)")),
        ([tmp_path / "nowhere", "--image", image], re.escape(f"error: {tmp_path / 'nowhere'}: no such directory")),
        ([run, "--image", image], re.escape("error: give the --question to ask about the image or video")),
    ]
    for args, message in cases:
        assert main(["predict", *map(str, args)]) == 2, args
        out = capsys.readouterr()
        assert out.out == "" and re.fullmatch(message + "\n", out.err), out.err


@pytest.mark.integration
def test_the_command_refuses_a_directory_that_is_not_a_run(tmp_path, served):
    image = served["llava"]["images"] / "0.png"
    result = subprocess.run([sys.executable, "-m", "vlft.cli", "predict", str(tmp_path), "--image", str(image),
                             "--question", "what shape is this?"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {tmp_path}: neither a finished vlft run (config.yaml beside the "
                                          "trained adapter or weights) nor a model written by `vlft merge` "
                                          "(vlft_merge.json)"]


@pytest.mark.parametrize("family", ["llava", "vl_bart"])
def test_a_video_question_is_answered_as_vlft_eval_answers_it(family, served, tmp_path, capsys):
    from tests.conftest import write_video
    from vlft.eval.run_eval import evaluate_run

    run = served[family]["run"]
    write_video(tmp_path / "clip.mp4", frames=8)
    question = "what color is the shape?"
    records = tmp_path / "video.json"
    records.write_text(json.dumps([{"id": "clip", "video": "clip.mp4", "conversations": [
        {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": "gray"}]}]))
    evaluate_run(str(run), [f"data.eval={records}", f"data.image_folder={tmp_path}"], out_dir=str(tmp_path / "eval"))
    (evaluated,) = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    capsys.readouterr()
    assert main(["predict", str(run), "--video", str(tmp_path / "clip.mp4"), "--question", question]) == 0
    assert capsys.readouterr().out == evaluated["answer"] + "\n"
