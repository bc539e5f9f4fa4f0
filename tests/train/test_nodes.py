"""What a run over several nodes decides before training: the step every node resumes from (or a message naming
each node's), whether output_dir is shared, and what the config hands the Trainer and DeepSpeed."""

import json

import pytest

from tests.conftest import REPO, tiny_config_dict
from vlft.config import ConfigError, config_from_dict
from vlft.models import get_family
from vlft.models.tiny import BUILT_MARKER, build_tiny_base, tiny_base_dir
from vlft.train.nodes import checkpoint_step, output_dir_is_shared, resume_disagreement
from vlft.train.run import build_training_arguments


def test_nodes_resuming_from_the_same_step_or_all_afresh_agree():
    assert resume_disagreement({0: 4, 1: 4}, {0: [2, 4], 1: [2, 4]}, "runs/x") is None
    assert resume_disagreement({0: None, 1: None}, {0: [], 1: []}, "runs/x") is None


def test_nodes_with_different_newest_checkpoints_are_named_with_the_newest_step_they_all_hold():
    message = resume_disagreement({0: 6, 1: 4, 2: 6}, {0: [2, 4, 6], 1: [2, 4], 2: [4, 6]}, "runs/x")
    assert message == ("the nodes would resume from different steps (node 0: checkpoint-6, node 1: checkpoint-4, "
                       "node 2: checkpoint-6); every node must resume from the same step: set "
                       "training.resume=runs/x/checkpoint-4 on every node (the newest step all of them hold)")
    message = resume_disagreement({0: 2, 1: None}, {0: [2], 1: []}, "runs/x")
    assert "(node 0: checkpoint-2, node 1: none)" in message and "start afresh with another" in message


def test_checkpoint_step_is_in_the_name_else_in_the_trainer_state(tmp_path):
    (tmp_path / "checkpoint-8").mkdir()
    assert checkpoint_step(str(tmp_path / "checkpoint-8")) == 8
    (tmp_path / "kept").mkdir()
    assert checkpoint_step(str(tmp_path / "kept")) is None
    (tmp_path / "kept" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert checkpoint_step(str(tmp_path / "kept")) == 7
    (tmp_path / "kept" / "trainer_state.json").write_text("{}")  # left to the Trainer's own checks
    assert checkpoint_step(str(tmp_path / "kept")) is None
    assert checkpoint_step(None) is None


def test_one_process_sees_its_own_output_dir(tmp_path):
    assert output_dir_is_shared(tmp_path / "run")


def test_ddp_timeout_and_node_local_checkpoints_reach_the_trainer_and_deepspeed(shapes_data, tmp_path):
    deepspeed = str(REPO / "configs" / "deepspeed" / "zero2.json")
    cfg = config_from_dict(tiny_config_dict(shapes_data, tmp_path / "run", ddp_timeout=7200, deepspeed=deepspeed))
    shared = build_training_arguments(cfg)
    assert shared.ddp_timeout == 7200 and not shared.save_on_each_node
    assert "checkpoint" not in shared.hf_deepspeed_config.config
    apart = build_training_arguments(cfg, on_each_node=True)
    assert apart.save_on_each_node and apart.hf_deepspeed_config.config["checkpoint"]["use_node_local_storage"]
    with pytest.raises(ConfigError, match="training.ddp_timeout must be a positive number of seconds"):
        config_from_dict(tiny_config_dict(shapes_data, tmp_path / "run", ddp_timeout=0))


def test_tiny_base_model_is_renamed_into_place_whole_and_a_second_build_leaves_the_first(shapes_data, tmp_path):
    cfg = config_from_dict(tiny_config_dict(shapes_data, tmp_path / "run"))
    base = tiny_base_dir(cfg)
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")  # cut short by an older vlft: no marker
    build_tiny_base(cfg, get_family("llava"), base)
    assert (base / BUILT_MARKER).is_file() and json.loads((base / "config.json").read_text())["model_type"]
    first = (base / "model.safetensors").stat().st_mtime_ns
    build_tiny_base(cfg, get_family("llava"), base)  # as a second node sharing output_dir would: the first rename won
    assert (base / "model.safetensors").stat().st_mtime_ns == first
    assert [p.name for p in base.parent.iterdir()] == ["base_model"]


def test_ddp_timeout_becomes_the_timeout_of_the_process_group():
    """transformers hands ddp_timeout to the process group on GPUs only; a CPU rank waited 30 minutes."""
    import torch
    import torch.distributed as dist

    from tests.conftest import free_port
    from vlft.train.run import set_collective_timeout

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        set_collective_timeout(77)
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert backend.options._timeout.total_seconds() == 77
    finally:
        dist.destroy_process_group()
