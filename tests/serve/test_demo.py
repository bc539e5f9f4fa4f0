"""`vlft demo` on a free loopback port: a question asked through the page's API (gradio_client) gets the answer
`vlft predict` gives, and headless Chromium can take a picture of the page (the README's screenshot is one:
VLFT_DEMO_SCREENSHOT=docs/demo.png python -m pytest -m slow tests/serve/test_demo.py)."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, draw, free_port
from vlft.serve.loading import load_served
from vlft.serve.predictor import Predictor

QUESTION = "what shape is this?"
NEEDS_EXTRA = 'the demo is an optional extra: pip install -e ".[demo]"'


def wait_for_page(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vlft demo exited with {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                if page.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"vlft demo did not answer on {url} within {seconds} s")


def screenshot(url: str, out: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,820", "--virtual-time-budget=10000", f"--screenshot={out}", url],
                   capture_output=True, timeout=120, check=True)
    with Image.open(out) as picture:
        assert picture.size == (1200, 820)
        assert len(picture.convert("RGB").getcolors(2**24)) > 50  # a drawn page, not a blank one
    if os.environ.get("VLFT_DEMO_SCREENSHOT"):
        shutil.copyfile(out, os.environ["VLFT_DEMO_SCREENSHOT"])


@pytest.mark.slow
@pytest.mark.integration
def test_demo_answers_through_its_api_as_predict_does(served, tmp_path):
    pytest.importorskip("gradio", reason=NEEDS_EXTRA)
    client_module = pytest.importorskip("gradio_client", reason=NEEDS_EXTRA)
    run = served["llava"]["run"]
    image = tmp_path / "red circle.png"
    draw("circle", "red", size=224).save(image)  # large enough to see on the page; the model's processor resizes
    predictor = Predictor(load_served(run, "cpu"))
    (expected,) = predictor.predict([predictor.record(QUESTION, str(image))])
    predictor.close()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen([sys.executable, "-m", "vlft.cli", "demo", str(run), "--port", str(port), "--image",
                               str(image), "--question", QUESTION], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_page(url, server, seconds=400)
        client = client_module.Client(url, verbose=False)
        answer = client.predict(client_module.handle_file(str(image)), None, QUESTION, 3, 0.0, api_name="/answer")
        assert answer == expected["answer"]
        sampled = client.predict(client_module.handle_file(str(image)), None, QUESTION, 3, 1.5, api_name="/answer")
        assert isinstance(sampled, str)
        screenshot(url, tmp_path / "demo.png")
    finally:
        server.terminate()
        server.wait(timeout=60)
