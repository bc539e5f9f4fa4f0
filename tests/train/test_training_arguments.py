"""What the config's training block becomes in transformers' TrainingArguments."""

import pytest

from tests.conftest import tiny_config_dict
from vlft.config import ConfigError, config_from_dict
from vlft.train.run import build_training_arguments


def test_warmup_ratio_is_a_fraction_of_the_steps(tmp_path):
    paths = {"train": tmp_path / "t.json", "test": tmp_path / "e.json", "images": tmp_path}
    cfg = config_from_dict(tiny_config_dict(paths, tmp_path / "run", warmup_ratio=0.03))
    args = build_training_arguments(cfg)
    # 3% of 1000 steps; a float read as a step count would give 0 and no warmup at all
    assert args.get_warmup_steps(1000) == 30 and args.get_warmup_steps(100) == 3
    cfg = config_from_dict(tiny_config_dict(paths, tmp_path / "run", warmup_ratio=0.0))
    assert build_training_arguments(cfg).get_warmup_steps(1000) == 0


def test_eval_metric_is_not_a_config_key(tmp_path):
    paths = {"train": tmp_path / "t.json", "test": tmp_path / "e.json", "images": tmp_path}
    raw = tiny_config_dict(paths, tmp_path / "run")
    raw["eval"]["metric"] = "top1"  # each family reports its own metric; there is nothing to choose
    with pytest.raises(ConfigError, match="metric"):
        config_from_dict(raw)
