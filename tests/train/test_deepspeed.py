"""The train script under the deepspeed launcher (2 CPU ranks, ZeRO-2 and strict ZeRO-3) and in one process, with
vlft's and peft's DoRA, on data that gives the two ranks different kinds of batch in every step (text-only,
images, two images, video: see tests/conftest.py write_mixed_dataset): every combination gives the losses of one
process running peft's DoRA on the same global batches, for LLaVA (also OneVision, whose videos take their own
path through the tower) and VL-BART. Under strict ZeRO-3 the eval set
does not split evenly over the ranks, and every prompt is still answered once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, free_port, strict_zero3, tiny_config_dict, write_mixed_dataset

pytestmark = pytest.mark.integration
STEPS = 3
EVAL_ODD = 5
# no dropout: ranks cannot draw the masks one process draws for the same examples
VL_BART_TINY = {"image_size": 32, "vision_hidden_size": 32, "text_hidden_size": 32, "text_layers": 1, "num_heads": 2,
                "dropout": 0.0}


def run(cfg: dict, tmp_path, name: str, ranks: int) -> list[float]:
    """Launch the train script; return the losses it logged at every step."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    if ranks == 1:
        cmd = [sys.executable, "scripts/train.py", str(config)]
    else:
        port = free_port()
        cmd = [shutil.which("deepspeed"), "--num_gpus", str(ranks), "--master_port", str(port),
               "scripts/train.py", str(config)]
    # headroom for a machine busy with other jobs; a hang still shows as a timeout
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    if ranks > 1 and not torch.cuda.is_available():  # DeepSpeed's CPU allreduce buffers (66 MB each, in memory)
        assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")), "left in /dev/shm"
    state = json.loads((tmp_path / name / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    return write_mixed_dataset(tmp_path_factory.mktemp("mixed"))


def config(data, out, family: str, impl: str, zero: str | None) -> dict:
    deepspeed = None
    if zero == "zero3-strict":
        deepspeed = strict_zero3(out.parent)
    elif zero:
        deepspeed = str(REPO / "configs" / "deepspeed" / f"{zero}.json")
    cfg = tiny_config_dict(data, out, max_steps=STEPS, save_steps=STEPS,
                           per_device_batch_size=4 if zero is None else 2, deepspeed=deepspeed)
    # file order (no shuffling): the batches of each rank are the ones write_mixed_dataset lays out
    cfg["data"].update(train=str(data["mixed_train"]), eval=str(data["mixed_eval"]), shuffle=False,
                       video={"num_frames": 2})
    cfg["eval"]["batch_size"] = 2
    if zero == "zero3-strict":  # 5 prompts one at a time: rank 0 has 3 batches of its own, rank 1 has 2
        cfg["eval"].update(batch_size=1, max_samples=EVAL_ODD)
    cfg["adapters"]["dora_impl"] = impl
    if family == "vl_bart":
        cfg["model"] = {"family": "vl_bart", "name_or_path": "tiny", "tiny": VL_BART_TINY}
    if family == "llava_onevision":  # its own video path: a batch with images and a video runs the tower twice
        cfg["model"]["tiny"]["architecture"] = "llava_onevision"
    return cfg


@pytest.fixture(scope="module")
def reference_losses(mixed_data, tmp_path_factory):
    """One process, peft's DoRA, per family (built on first use)."""
    losses = {}

    def get(family: str) -> list[float]:
        if family not in losses:
            tmp = tmp_path_factory.mktemp(f"reference-{family}")
            losses[family] = run(config(mixed_data, tmp / "reference", family, "peft", None), tmp, "reference", 1)
        return losses[family]

    return get


SLOW = pytest.mark.slow  # the other combinations run in the slow run (.ci/run), to keep the default run short


@pytest.mark.parametrize("family, impl, zero", [
    pytest.param("llava", "vlft", None, marks=SLOW), pytest.param("llava", "peft", "zero2", marks=SLOW),
    pytest.param("llava", "vlft", "zero2", marks=SLOW), pytest.param("llava", "peft", "zero3", marks=SLOW),
    ("llava", "vlft", "zero3-strict"), pytest.param("vl_bart", "vlft", "zero2", marks=SLOW),
    pytest.param("vl_bart", "vlft", "zero3-strict", marks=SLOW),
    pytest.param("llava_onevision", "vlft", "zero3-strict", marks=SLOW)])
def test_losses_match_one_process_with_peft_dora(mixed_data, tmp_path, reference_losses, family, impl, zero):
    name = f"{family}-{impl}-{zero or 'single'}"
    losses = run(config(mixed_data, tmp_path / name, family, impl, zero), tmp_path, name, ranks=2 if zero else 1)
    reference = reference_losses(family)
    assert len(losses) == len(reference) == STEPS
    # Same global batch (2 ranks x 2 = 1 x 4) and tokens averaged across ranks, so only the order of float
    # sums differs; the DoRA implementations agree to ~1e-7 per layer (tests/adapters/test_dora.py).
    assert losses == pytest.approx(reference, rel=1e-4)
    if zero:
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        questions = EVAL_ODD if zero == "zero3-strict" else 6
        assert metrics["world_size"] == 2 and metrics["eval"]["eval_num_questions"] == questions
        assert (tmp_path / name / "adapter_model.safetensors").is_file()
        # every prompt answered once, none twice, however unevenly the prompts split over the ranks
        records = json.loads(mixed_data["mixed_eval"].read_text())[:questions]
        predictions = json.loads((tmp_path / name / "predictions.json").read_text())
        assert [p["question_id"] for p in predictions] == [r["id"] for r in records]
