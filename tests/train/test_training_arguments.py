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


def test_fp16_reaches_the_trainer_and_is_refused_beside_bf16(tmp_path):
    paths = {"train": tmp_path / "t.json", "test": tmp_path / "e.json", "images": tmp_path}
    args = build_training_arguments(config_from_dict(tiny_config_dict(paths, tmp_path / "run", fp16=True)))
    assert args.fp16 and not args.bf16
    with pytest.raises(ConfigError, match="training.bf16 and training.fp16 are both true"):
        config_from_dict(tiny_config_dict(paths, tmp_path / "run", fp16=True, bf16=True))


def test_deepspeed_without_a_mixed_precision_mode_refuses_trainable_weights_of_two_dtypes(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from vlft.train.run import check_one_trainable_dtype

    # a bf16 base as peft adapts it: DoRA adapters kept fp32, a layer trained in full (modules_to_save) bf16
    model = get_peft_model(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).to(torch.bfloat16),
                           LoraConfig(r=2, use_dora=True, target_modules=["0"], modules_to_save=["1"]))
    paths = {"train": tmp_path / "t.json", "test": tmp_path / "e.json", "images": tmp_path}

    def cfg(**training):
        raw = tiny_config_dict(paths, tmp_path / "run", **training)
        raw["model"]["dtype"] = "bfloat16"
        return config_from_dict(raw)

    with pytest.raises(ConfigError, match=r"2 dtypes, e\.g\. .*lora_A.* \(float32\), .*modules_to_save.* "
                                          r"\(bfloat16\).*set training.bf16: true"):
        check_one_trainable_dtype(model, cfg(deepspeed="configs/deepspeed/zero3.json"))
    check_one_trainable_dtype(model, cfg(deepspeed="configs/deepspeed/zero3.json", bf16=True))  # DeepSpeed casts
    check_one_trainable_dtype(model, cfg())  # one process: the mix trains as it is
