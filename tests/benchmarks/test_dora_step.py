"""benchmarks/dora_step.py, run on the CPU at tiny shapes before it meets a GPU: the cases it plans (LLaVA-1.5-7B's
language-model shapes), the work per step it counts, and the table it prints."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "dora_step.py"
_spec = importlib.util.spec_from_file_location("dora_step", SCRIPT)
dora_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dora_step)
TINY = ["--hidden", "64", "--rank", "4", "--layers", "1", "--batch", "1", "--seq", "16"]


def test_llava_7b_plans_the_language_model_shapes_and_takes_overrides():
    (spec,) = dora_step.plan(dora_step.parse_args(["--llava-7b"]))
    assert spec == {"case": "llama", "hidden": 4096, "intermediate": 11008, "rank": 128, "layers": 4, "batch": 1,
                    "seq": 2048}
    (spec,) = dora_step.plan(dora_step.parse_args(["--llava-7b", "--layers", "1", "--seq", "8"]))
    assert (spec["hidden"], spec["layers"], spec["seq"]) == (4096, 1, 8)
    specs = dora_step.plan(dora_step.parse_args(["--case", "resnet-stage", "--rank", "8"]))
    assert [(s["case"], s["rank"]) for s in specs] == [("resnet-stage", 8)]
    specs = dora_step.plan(dora_step.parse_args(["--hidden", "1024", "--rank", "16"]))
    assert [(s["hidden"], s["intermediate"], s["rank"], s["batch"], s["seq"]) for s in specs] == [
        (1024, 2816, 16, 2, 256)]


def test_step_work_counts_show_what_dora_adds_over_lora():
    """One step of each implementation in this process: forward and backward without a host sync, and vlft's DoRA
    adding fewer aten ops over LoRA than peft's."""
    spec = dora_step.plan(dora_step.parse_args(TINY))[0]
    rows = {impl: dora_step.memory_worker(spec, impl, "cpu", None, steps=1, warmup=0)
            for impl in ("lora", "peft-dora", "vlft-dora")}
    assert {r["syncs"] for r in rows.values()} == {0}
    lora, peft, vlft = (rows[i]["ops"] for i in ("lora", "peft-dora", "vlft-dora"))
    assert lora < vlft < peft
    assert all(r["peak_mb"] > 0 and r["dtype"] == "float32" for r in rows.values())


def test_ratios_are_paired_by_round_with_their_quartiles():
    # LoRA drifts from 1.0 to 2.0 s, DoRA is 1.1x it in every round but one: a ratio of medians would mix rounds
    times = {"lora": [1.0, 1.0, 2.0, 2.0], "peft-dora": [2.0, 2.0, 4.0, 4.0], "vlft-dora": [1.1, 1.1, 2.2, 3.0]}
    got = dora_step.paired_ratios(times["vlft-dora"], times)
    assert got == {"x_lora": 1.1, "x_lora_q1": 1.1, "x_lora_q3": 1.2, "x_peft": 0.55}


def test_the_timing_rounds_turn_the_order_of_the_implementations(monkeypatch):
    order = []

    def fake_setup(spec, impl, device, dtype):
        return None, None, None, lambda: order.append(impl) or 1.0, device, dtype

    monkeypatch.setattr(dora_step, "_setup", fake_setup)
    timing = dora_step.timing_worker({}, "cpu", None, steps=4, warmup=0)
    impls = list(dora_step.IMPLS)
    assert [order[i * 4] for i in range(4)] == impls  # each round starts one further along
    assert order[4:8] == impls[1:] + impls[:1]
    assert timing["vlft-dora"] == {"step_s": 1.0, "x_lora": 1.0, "x_lora_q1": 1.0, "x_lora_q3": 1.0, "x_peft": 1.0}


def test_a_value_read_in_forward_counts_as_a_host_sync():
    """The sync count is not blind: a ``.item()`` in forward (what a data-dependent branch costs) shows."""
    spec = dora_step.plan(dora_step.parse_args(TINY))[0]
    model, loss_fn, train_step, *_ = dora_step._setup(spec, "lora", "cpu", None)

    def read_a_value(module, args, out):
        bool((out == 0).any())

    model.base_model.model.lm_head.register_forward_hook(read_a_value)
    assert dora_step.count_step_work(train_step, cuda=False)[1] == 1


@pytest.mark.slow
def test_the_command_prints_one_row_per_implementation():
    out = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--steps", "1", "--warmup", "0", "--threads", "1"],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("device: cpu") and lines[1].split()[:4] == ["case", "hidden", "rank", "impl"]
    assert [line.split()[3] for line in lines[2:]] == list(dora_step.IMPLS)
