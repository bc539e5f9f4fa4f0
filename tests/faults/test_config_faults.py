"""Config errors stop `vlft train` with exit status 2 and one line naming the file, the key and what was expected,
before any model is built."""

import pytest
import yaml

from tests.conftest import tiny_config_dict
from vlft.cli import main

CASES = {
    "unknown key": (("training", "learning_rate", 1e-4), r"unknown key 'training.learning_rate'; did you mean "
                                                         r"'training.lr'\?"),
    "typo": (("adapters", "alpah", 8), r"unknown key 'adapters.alpah'; did you mean 'adapters.alpha'\?"),
    "wrong type": (("training", "max_steps", "ten"), r"'training.max_steps' expects int, got str 'ten'"),
    "wrong value": (("adapters", "vision", "dorra"),
                    r"'adapters.vision' must be one of \['frozen', 'lora', 'dora', 'full'\], got 'dorra'"),
    "bad on_error": (("data", "on_error", "ignore"), r"'data.on_error' must be one of \['raise', 'skip'\]"),
    "missing train file": (("data", "train", "nowhere/train.json"), r"data.train: file not found: nowhere/train.json"),
    "missing eval file": (("data", "eval", "nowhere/eval.json"), r"data.eval: file not found: nowhere/eval.json"),
    "missing image folder": (("data", "image_folder", "no/images"), r"data.image_folder: directory not found"),
    "missing model path": (("model", "name_or_path", "./checkpoints/llava-7b"),
                           r"model.name_or_path: directory not found: ./checkpoints/llava-7b"),
    "missing deepspeed config": (("training", "deepspeed", "ds/zero9.json"),
                                 r"training.deepspeed: file not found: ds/zero9.json"),
    "missing resume checkpoint": (("training", "resume", "runs/x/checkpoint-9"),
                                  r"training.resume: checkpoint directory not found: runs/x/checkpoint-9"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_names_file_and_key_before_any_model_is_built(shapes_data, tmp_path, capsys, case):
    (block, key, value), expected = CASES[case]
    cfg = tiny_config_dict(shapes_data, tmp_path / "run")
    cfg[block][key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"config error: {path}")
    assert __import__("re").search(expected, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()  # nothing built, nothing written
