"""A real run of the training path on a tiny model: files written, stock peft parity, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from vlft.config import config_from_dict
from vlft.train.run import latest_complete_checkpoint, train


@pytest.fixture(scope="module")
def finished_run(shapes_data, tmp_path_factory):
    from tests.conftest import tiny_config_dict

    out = tmp_path_factory.mktemp("run") / "out"
    cfg = config_from_dict(tiny_config_dict(shapes_data, out, max_steps=6, save_steps=3))
    return out, train(cfg)


def test_run_directory_holds_adapter_processor_config_and_metrics(finished_run):
    out, result = finished_run
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "preprocessor_config.json",
            "config.yaml", "metrics.json", "predictions.json", "base_model"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and 0 < metrics["trainable_percent"] < 100
    assert 0.0 <= metrics["eval"]["eval_vqa_accuracy"] <= 100.0 and metrics["eval"]["eval_num_questions"] == 24
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 24 and {"question_id", "answer", "references"} <= set(predictions[0])
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["max_steps"] == 6
    assert latest_complete_checkpoint(out).endswith("checkpoint-6")


def test_saved_adapter_loads_in_stock_peft_with_identical_logits(finished_run):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    out, result = finished_run
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["use_dora"]
    assert Path(adapter_config["base_model_name_or_path"]) == out.resolve() / "base_model"
    base = LlavaForConditionalGeneration.from_pretrained(adapter_config["base_model_name_or_path"])
    stock = PeftModel.from_pretrained(base, str(out)).eval()
    trained = result.model.eval()
    batch = result.bundle.image_processor(torch.rand(2, 3, 32, 32), return_tensors="pt", do_rescale=False)
    spec = result.bundle
    ids = torch.tensor([[1] + [spec.image_token_id] * spec.num_image_tokens + [5, 6, 7]] * 2)
    with torch.no_grad():
        expected = trained(input_ids=ids, pixel_values=batch["pixel_values"]).logits
        got = stock(input_ids=ids, pixel_values=batch["pixel_values"]).logits
    assert not torch.allclose(expected, base.eval()(input_ids=ids, pixel_values=batch["pixel_values"]).logits)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.integration
def test_killed_run_resumes_from_its_last_complete_checkpoint(shapes_data, tmp_path):
    from tests.conftest import tiny_config_dict

    out = tmp_path / "run"
    cfg = tiny_config_dict(shapes_data, out, max_steps=40, save_steps=4, save_total_limit=None, resume="auto")
    cfg["eval"]["at_end"] = False
    config = write_config(tmp_path / "run.yaml", cfg)
    cmd = [sys.executable, "scripts/train.py", str(config)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_complete_checkpoint(out) is None or not latest_complete_checkpoint(out).endswith(("-8", "-12")):
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest_complete_checkpoint(out)
    assert not (out / "checkpoint-40").exists()
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {killed_at}" in second.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == killed_at and metrics["global_step"] == 40
    state = json.loads((out / "checkpoint-40" / "trainer_state.json").read_text())
    resumed_step = int(killed_at.rsplit("-", 1)[1])
    assert state["global_step"] == 40 and any(h.get("step") == resumed_step + 1 for h in state["log_history"])


def test_evaluate_script_reproduces_the_in_training_predictions(finished_run, tmp_path):
    out, _ = finished_run
    in_training = json.loads((out / "predictions.json").read_text())
    result = subprocess.run([sys.executable, "scripts/evaluate.py", str(out), "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads((tmp_path / "predictions.json").read_text())
    assert [r["answer"] for r in reloaded] == [r["answer"] for r in in_training]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["eval"]
    expected = json.loads((out / "metrics.json").read_text())["eval"]
    assert metrics["eval_vqa_accuracy"] == expected["eval_vqa_accuracy"]
