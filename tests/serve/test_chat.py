"""`vlft chat` in a pseudo-terminal: two turns about an image (the second asked with the first as context), a
switch to another image with /image, Ctrl-D; and the streaming underneath it."""

import json
import os
import sys

import pytest

from tests.conftest import REPO
from vlft.serve.loading import load_served
from vlft.serve.predictor import Predictor

SHAPE, COLOR = "what shape is this?", "what color is the shape?"


@pytest.fixture(scope="module")
def llava_predictor(served):
    predictor = Predictor(load_served(served["llava"]["run"], "cpu"))
    yield predictor
    predictor.close()


def test_streamed_pieces_are_the_words_of_the_evaluations_answer(served):
    paths = served["vl_bart"]
    predictor = Predictor(load_served(paths["merged"], "cpu"))
    record = predictor.record(SHAPE, image=str(paths["images"] / "0.png"))
    stream = predictor.stream(record)
    pieces = [piece for piece in stream if piece]
    expected = json.loads((paths["run"] / "predictions.json").read_text())[0]["answer"]
    assert stream.answer == expected
    assert "".join(pieces).strip() == expected
    assert len(pieces) == len(expected.split()) > 1  # word by word as generated, not all at the end
    predictor.close()


@pytest.mark.integration
def test_chat_in_a_terminal_two_turns_an_image_switch_and_ctrl_d(served, llava_predictor):
    pexpect = pytest.importorskip("pexpect", reason="the chat test drives a pseudo-terminal with pexpect")
    paths = served["llava"]
    first_image, second_image = str(paths["images"] / "0.png"), str(paths["images"] / "1.png")
    ask = llava_predictor.predict
    first = ask([llava_predictor.record(SHAPE, first_image)])[0]["answer"]
    second = ask([llava_predictor.record(COLOR, first_image, history=[(SHAPE, first)])])[0]["answer"]
    third = ask([llava_predictor.record(SHAPE, second_image)])[0]["answer"]
    evaluated = json.loads((paths["run"] / "predictions.json").read_text())
    assert first == evaluated[0]["answer"] and third == evaluated[2]["answer"]  # single questions: the eval's

    child = pexpect.spawn(sys.executable, ["-m", "vlft.cli", "chat", str(paths["run"]), "--image", first_image],
                          cwd=str(REPO), env={**os.environ, "TERM": "dumb"}, encoding="utf-8", timeout=300,
                          dimensions=(40, 250))
    transcript = []

    def turn(line: str) -> str:
        child.sendline(line)
        child.expect_exact("you> ")
        transcript.append(child.before)
        return child.before.replace("\r\n", "\n")

    child.expect_exact("you> ")
    assert f"[image: {first_image}; new conversation]" in child.before
    assert turn(SHAPE) == f"{SHAPE}\nmodel> {first}\n"
    assert turn(COLOR) == f"{COLOR}\nmodel> {second}\n"
    assert turn(f"/image {second_image}") == f"/image {second_image}\n[image: {second_image}; new conversation]\n"
    assert turn(SHAPE) == f"{SHAPE}\nmodel> {third}\n"  # a new conversation: the first question's answer again
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, transcript
