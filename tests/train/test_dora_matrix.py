"""Two training steps of the tiny LLaVA through `vlft.train.run.train`, vlft's DoRA against peft's, in every
configuration users train with: precision x LoRA dropout x activation checkpointing x vision tower.

The full grid (32 configurations, vlft and peft each) is `slow`; the default run takes 8 configurations that
cover every pair of values of any two dimensions. Where peft cannot run (its Conv2d DoRA applies a bf16 kernel
to the fp32 dropout output), vlft is checked against its own fp32 run of the same configuration.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import transformers

from tests.adapters.test_dora_quantized import PROBLEM as QUANTIZATION_PROBLEM
from tests.conftest import tiny_config_dict
from vlft.config import config_from_dict
from vlft.models.llava import build_tiny_for_run
from vlft.train import run as train_run
from vlft.train.trainer import VlftTrainer

PRECISIONS = {
    "fp32": [],
    "bf16-autocast": ["training.bf16=true"],  # the Trainer's CPU autocast
    "fp16-autocast": [],  # entered below: on a CPU the Trainer ignores fp16 (it autocasts fp16 on a GPU only)
    "bf16-base": ["model.dtype=bfloat16"],  # peft makes the adapters fp32 on a bf16 base
}
GRID = list(itertools.product(PRECISIONS, [0.0, 0.05], [False, True], ["frozen", "dora"]))
# every pair of values of any two dimensions appears at least once (precision x the three binary ones)
PAIRWISE = [("fp32", 0.0, False, "frozen"), ("fp32", 0.05, True, "dora"),
            ("bf16-autocast", 0.0, True, "dora"), ("bf16-autocast", 0.05, False, "frozen"),
            ("fp16-autocast", 0.0, False, "dora"), ("fp16-autocast", 0.05, True, "frozen"),
            ("bf16-base", 0.0, True, "frozen"), ("bf16-base", 0.05, False, "dora")]
# Relative loss tolerance, vlft against peft. fp32: the two differ in the order of float sums only (~1e-7 per
# layer, tests/adapters/test_dora.py; seen here: 7e-8). With autocast or a bf16 base every matmul output is
# rounded to 8 (bf16) or 11 (fp16) bits in both, at different points (peft adds the DoRA terms in fp32, vlft in
# the output dtype with g − 1 kept exact): logits differ by up to ~2^-8 resp. 2^-11 relative, and AdamW's first
# update is lr per element whatever the gradient's size, so the second loss carries that too. Seen on the grid:
# bf16 autocast 3.8e-3, bf16 base 5.9e-4, fp16 autocast 1.1e-4.
TOLERANCE = {"fp32": 1e-5, "bf16-autocast": 1e-2, "fp16-autocast": 2e-3, "bf16-base": 1e-2}
# vlft on a bf16 base against vlft in fp32 (where peft cannot run): every weight rounded to 8 bits, as bf16
# autocast rounds them (seen: 3.6e-4)
AGAINST_FP32 = 1e-2


@pytest.fixture(scope="module")
def base_model(shapes_data, tmp_path_factory):
    """The tiny LLaVA checkpoint, built once (as `train` builds `tiny`) and loaded by every run."""
    out = tmp_path_factory.mktemp("tiny-llava")
    cfg = config_from_dict(tiny_config_dict(shapes_data, out / "unused"))
    return str(build_tiny_for_run(cfg, out / "base"))


def train_losses(shapes_data, base_model, tmp_path, monkeypatch, impl, precision, dropout, checkpointing, vision,
                 extra=()):
    """The logged loss of each of 2 steps of `train` with this configuration."""
    raw = tiny_config_dict(shapes_data, tmp_path / f"{impl}-{precision}", max_steps=2, logging_steps=1,
                           report_to=["none"], seed=3)
    raw["model"]["name_or_path"] = base_model
    raw["eval"]["at_end"] = False
    overrides = [*PRECISIONS[precision], f"adapters.dropout={dropout}", f"adapters.vision={vision}",
                 f"adapters.dora_impl={impl}", f"model.gradient_checkpointing={str(checkpointing).lower()}", *extra]
    losses, log = [], transformers.Trainer.log

    def recording_log(self, logs, *args, **kwargs):
        if "loss" in logs:
            losses.append(logs["loss"])
        return log(self, logs, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(transformers.Trainer, "log", recording_log)
        patch.setattr("gc.collect", lambda *a: 0)  # accelerate's cleanup: seconds in a big test process
        patch.setattr(train_run, "write_training_report", lambda *a, **k: None, raising=False)  # a PNG
        if precision == "fp16-autocast":
            patch.setattr(VlftTrainer, "compute_loss_context_manager",
                          lambda self: torch.autocast("cpu", dtype=torch.float16))
        train_run.train(config_from_dict(raw, overrides))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    return losses


def check(configuration, shapes_data, base_model, tmp_path, monkeypatch):
    args = shapes_data, base_model, tmp_path, monkeypatch
    got = train_losses(*args, "vlft", *configuration)
    try:
        want, tolerance = train_losses(*args, "peft", *configuration), TOLERANCE[configuration[0]]
    except RuntimeError as err:  # peft's own failure: compare with vlft in fp32
        assert configuration[0] == "bf16-base" and configuration[1] > 0 and configuration[3] == "dora", err
        want, tolerance = train_losses(*args, "vlft", "fp32", *configuration[1:]), AGAINST_FP32
    assert got == pytest.approx(want, rel=tolerance), (got, want)


@pytest.mark.parametrize("configuration", PAIRWISE, ids=lambda c: "-".join(map(str, c)))
def test_two_steps_match_peft_pairwise(configuration, shapes_data, base_model, tmp_path, monkeypatch):
    check(configuration, shapes_data, base_model, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("configuration", [c for c in GRID if c not in PAIRWISE], ids=lambda c: "-".join(map(str, c)))
def test_two_steps_match_peft_full_grid(configuration, shapes_data, base_model, tmp_path, monkeypatch):
    check(configuration, shapes_data, base_model, tmp_path, monkeypatch)


def int8_roundtrip_checkpoint(base_model: str, out) -> str:
    """The base checkpoint with its language model's linear weights replaced by their LLM.int8 values: on a CPU
    bitsandbytes' 8-bit matmul is that dequantized weight times the input, so fp32 training on this checkpoint
    is the 8-bit run's reference."""
    import shutil

    import bitsandbytes.functional as bnb_functional
    from transformers import LlavaForConditionalGeneration

    shutil.copytree(base_model, out)
    model = LlavaForConditionalGeneration.from_pretrained(base_model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model"):
                rows, scales, _ = bnb_functional.int8_vectorwise_quant(module.weight.half())
                module.weight.copy_(bnb_functional.int8_vectorwise_dequant(rows, scales))
    model.save_pretrained(out)
    return str(out)


@pytest.mark.skipif(QUANTIZATION_PROBLEM is not None, reason=f"bitsandbytes cannot run here ({QUANTIZATION_PROBLEM})")
@pytest.mark.parametrize("bits", [4, 8])
def test_two_steps_on_a_quantized_base_match_the_reference(bits, shapes_data, base_model, tmp_path, monkeypatch):
    """model.quantization (the language model in NF4 or LLM.int8) with dropout, checkpointing and the vision tower's
    DoRA: the same dequantized weights on both sides, so fp32's tolerance. The reference is peft's DoRA for NF4;
    for LLM.int8 peft's DoRA fails on a CPU from the second step (its weight helper re-wraps the int8 weight and
    loses its scales), so it is vlft's fp32 run on the int8 round-tripped checkpoint."""
    args = shapes_data, base_model, tmp_path, monkeypatch
    configuration = "fp32", 0.05, True, "dora"
    got = train_losses(*args, "vlft", *configuration, extra=[f"model.quantization.bits={bits}"])
    if bits == 4:
        want = train_losses(*args, "peft", *configuration, extra=["model.quantization.bits=4"])
    else:
        roundtrip = int8_roundtrip_checkpoint(base_model, tmp_path / "int8-roundtrip")
        want = train_losses(shapes_data, roundtrip, tmp_path / "reference", monkeypatch, "vlft", *configuration)
    assert got == pytest.approx(want, rel=TOLERANCE["fp32"]), (got, want)
