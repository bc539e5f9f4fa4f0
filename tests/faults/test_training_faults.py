"""Training faults, injected by tests/faults/harness.py in a real `vlft train` process: a NaN loss stops the run
and keeps the last good checkpoint; a SIGKILL during a step or during a checkpoint save, then `resume: auto`,
ends with the weights of an uninterrupted run (single process and ZeRO-2 on 2 ranks)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, free_port, tiny_config_dict
from vlft.train.checkpoints import STAGING

pytestmark = pytest.mark.integration
STEPS, SAVE_EVERY = 8, 2  # 12 images, 2 per rank-step: the kills land mid-epoch and in the second epoch
SIGKILLED = (-9, 137, 247)  # the process itself, or the deepspeed launcher reporting it


def config(shapes_data, tmp_path, name: str, zero2: bool) -> str:
    cfg = tiny_config_dict(shapes_data, tmp_path / name, max_steps=STEPS, save_steps=SAVE_EVERY,
                           per_device_batch_size=2, resume="auto", save_total_limit=None,
                           deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json") if zero2 else None)
    cfg["adapters"]["dropout"] = 0.1  # the dropout RNG must come back too
    cfg["eval"]["at_end"] = False
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def launch(cfg: str, fault: str | None = None, zero2: bool = False) -> subprocess.CompletedProcess:
    harness = str(REPO / "tests" / "faults" / "harness.py")
    cmd = [sys.executable, harness, cfg]
    if zero2:
        cmd = [shutil.which("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               harness, cfg]
    env = {**os.environ, "VLFT_FAULT": fault or ""}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def final_weights(run_dir) -> dict:
    return load_file(str(run_dir / "adapter_model.safetensors"))


def assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        scale = tensor.abs().max().clamp_min(1e-12)
        assert ((got[name] - tensor).abs().max() / scale).item() <= 1e-6, name


@pytest.fixture(scope="module")
def uninterrupted(shapes_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out = launch(config(shapes_data, tmp, "run", zero2=False))
    assert out.returncode == 0, out.stderr[-3000:]
    return final_weights(tmp / "run")


@pytest.mark.slow  # the launcher three times per case (uninterrupted, killed, resumed): kept for the slow run
@pytest.mark.parametrize("fault, resumes_from", [("kill_step:5", 4), ("kill_save:4", 2)])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(shapes_data, tmp_path, uninterrupted, fault,
                                                                 resumes_from):
    cfg = config(shapes_data, tmp_path, "run", zero2=False)
    killed = launch(cfg, fault)
    assert killed.returncode in SIGKILLED, killed.stderr[-3000:]
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints[-1] == f"checkpoint-{resumes_from}"  # a save cut short never shows up as checkpoint-N
    resumed = launch(cfg)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / f'checkpoint-{resumes_from}'}" in resumed.stdout
    assert ("removed a checkpoint left half-written" in resumed.stdout) == fault.startswith("kill_save")
    assert not (tmp_path / "run" / STAGING).exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == STEPS
    assert_same_weights(final_weights(tmp_path / "run"), uninterrupted)


@pytest.mark.slow  # the deepspeed launcher twice plus an uninterrupted run: kept for the slow run (.ci/run)
def test_sigkill_then_resume_under_zero2_ends_with_the_uninterrupted_weights(shapes_data, tmp_path):
    full = launch(config(shapes_data, tmp_path, "full", zero2=True), zero2=True)
    assert full.returncode == 0, full.stderr[-3000:]
    cfg = config(shapes_data, tmp_path, "killed", zero2=True)
    killed = launch(cfg, "kill_step:5", zero2=True)
    # the launcher exits with the rank's own status; any other failure (a crash, a port clash) is not this test
    assert killed.returncode in SIGKILLED, killed.stderr[-3000:]
    assert "exits with return code = -9" in killed.stdout + killed.stderr
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*"))[-1] == "checkpoint-4"
    resumed = launch(cfg, zero2=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint-4'}" in resumed.stdout
    assert_same_weights(final_weights(tmp_path / "killed"), final_weights(tmp_path / "full"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(shapes_data, tmp_path):
    out = launch(config(shapes_data, tmp_path, "run", zero2=False), "nan_step:3")
    assert out.returncode == 3
    message = [line for line in out.stderr.splitlines() if "training stopped: " in line]
    assert len(message) == 1
    assert "the loss is nan at step 3" in message[0]
    assert f"Last good checkpoint: {tmp_path / 'run' / 'checkpoint-2'}" in message[0]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert not (run / "adapter_model.safetensors").exists()  # nothing after the bad step was written
