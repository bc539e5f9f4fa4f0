import pytest

from vlft.config import ConfigError, RunConfig, config_from_dict, explain, load_config

BASE = {"data": {"train": "t.json"}, "training": {"output_dir": "out"}}


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: t.json}\ntraining: {output_dir: o, learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'training.learning_rate'.*'training.lr'"):
        load_config(path)


def test_unknown_top_level_block_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'adapter'; did you mean 'adapters'"):
        config_from_dict({**BASE, "adapter": {"r": 4}})


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'training.max_steps' expects int, got str 'ten'"):
        config_from_dict(BASE, ["training.max_steps=ten"])


def test_bad_tower_method_lists_the_choices():
    with pytest.raises(ConfigError, match=r"'adapters.vision' must be one of \['frozen', 'lora', 'dora', 'full'\]"):
        config_from_dict({**BASE, "adapters": {"vision": "dorra"}})


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"missing required key 'training.output_dir'"):
        config_from_dict({"data": {"train": "t.json"}, "training": {}})


def test_value_check_in_post_init_names_the_field():
    with pytest.raises(ConfigError, match=r"adapters.r must be a positive integer, got 0"):
        config_from_dict({**BASE, "adapters": {"r": 0}})


def test_group_by_record_is_refused_for_a_family_that_does_not_take_it(tmp_path):
    from vlft.train.preflight import check_paths

    (tmp_path / "t.json").write_text("[]")
    cfg = config_from_dict({"data": {"train": str(tmp_path / "t.json"), "image_folder": str(tmp_path),
                                     "group_by_record": True},
                            "training": {"output_dir": "out"}, "model": {"family": "llava"}})
    with pytest.raises(ConfigError, match=r"run.yaml: data.group_by_record: the llava family does not read it "
                                          r"\(read by: vl_bart\)"):
        check_paths(cfg, source="run.yaml")


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = config_from_dict(BASE, ["training.lr=3e-4", "adapters.r=32", "training.report_to=[tensorboard]",
                                  "training.deepspeed=null"])
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.adapters.r == 32
    assert cfg.training.report_to == ["tensorboard"]
    assert cfg.training.deepspeed is None


def test_int_is_accepted_for_float_and_yaml_exponent_strings():
    cfg = config_from_dict({**BASE, "training": {"output_dir": "o", "lr": "2e-4", "epochs": 3}})
    assert cfg.training.lr == pytest.approx(2e-4) and isinstance(cfg.training.epochs, float)


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match=r"override 'training.lr' must look like key=value"):
        config_from_dict(BASE, ["training.lr"])


def test_shipped_configs_load(tmp_path):
    from tests.conftest import REPO

    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), RunConfig), path
        assert path.read_text().startswith("#"), f"{path} must open with its launch command"


def test_explain_lists_every_leaf_key_with_help():
    rows = {key: text for key, _, _, text in explain()}
    assert "adapters.r" in rows and "model.tiny.patch_size" in rows and "training.deepspeed" in rows
    assert all(rows.values())


def test_quantization_is_a_block_with_bits_and_is_refused_where_it_cannot_apply():
    cfg = config_from_dict(BASE, ["model.quantization.bits=4"])
    assert cfg.model.quantization.bits == 4 and config_from_dict(BASE).model.quantization is None
    with pytest.raises(ConfigError, match=r"'model.quantization.bits' must be one of \[4, 8\], got 3"):
        config_from_dict(BASE, ["model.quantization.bits=3"])
    with pytest.raises(ConfigError, match=r"model.quantization: supported for the llava family, not vit"):
        config_from_dict(BASE, ["model.quantization.bits=8", "model.family=vit"])
    with pytest.raises(ConfigError, match=r"cannot be trained in full; set adapters.language"):
        config_from_dict(BASE, ["model.quantization.bits=4", "adapters.language=full"])
