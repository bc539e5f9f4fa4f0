"""Reading a run directory that an earlier vlft wrote."""

import pytest
import yaml

from tests.conftest import tiny_config_dict
from vlft.config import ConfigError, load_config
from vlft.runs import load_run_config


def test_a_saved_run_with_a_retired_key_still_loads(tmp_path):
    paths = {"train": tmp_path / "t.json", "test": tmp_path / "e.json", "images": tmp_path}
    raw = tiny_config_dict(paths, tmp_path / "run")
    raw["eval"]["metric"] = "top1"  # what vlft wrote into config.yaml before eval.metric was removed
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_run_config(path, ["eval.batch_size=3"])
    assert cfg.eval.batch_size == 3 and cfg.eval.max_new_tokens == 3
    with pytest.raises(ConfigError, match=r"unknown key 'eval.metric'"):
        load_config(path)  # a config a person writes is still checked strictly
