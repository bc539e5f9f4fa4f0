"""A real run of the training path on a tiny model: files written, stock peft parity, evaluation replayed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from vlft.config import config_from_dict
from vlft.eval.vqa import vqa_accuracy
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
    assert metrics["eval"]["eval_num_questions"] == 24
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 24 and {"question_id", "answer", "references"} <= set(predictions[0])
    # the reported accuracy is the official rule over the answers written beside it
    expected = 100 * sum(vqa_accuracy(p["answer"], p["references"]) for p in predictions) / len(predictions)
    assert metrics["eval"]["eval_vqa_accuracy"] == round(expected, 2)
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
