"""Every registered family fulfils the written contract (vlft/models/contract.py), and a family added in a
module of its own, registered by name, runs through `vlft train --dry-run` with nothing else touched."""

import inspect
import types

import pytest
import yaml

from tests.conftest import tiny_config_dict
from vlft.cli import main
from vlft.models import FAMILIES, get_family
from vlft.models.contract import AnswersInText, ClassifiesImages, ModelFamily
from vlft.train.preflight import DATA_OPTION_KEYS

HOOKS = [name for name, member in vars(ModelFamily).items() if inspect.isfunction(member) and name[0] != "_"]


def assert_fulfils(family: types.ModuleType) -> None:
    assert isinstance(family, ModelFamily), family.__name__
    assert isinstance(family, AnswersInText) != isinstance(family, ClassifiesImages), family.__name__
    for hook in HOOKS:
        wanted = list(inspect.signature(getattr(ModelFamily, hook)).parameters.values())[1:]  # without self
        given = inspect.signature(getattr(family, hook)).parameters
        assert list(given)[:len(wanted)] == [p.name for p in wanted], f"{family.__name__}.{hook}"
        for p in wanted:  # what the protocol lets a caller leave out, the family must default the same way
            assert given[p.name].default == p.default, f"{family.__name__}.{hook}({p.name})"
        extra = list(given.values())[len(wanted):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), f"{family.__name__}.{hook}"
    assert all(isinstance(k, str) and isinstance(v, tuple) and v for k, v in family.TOWERS.items())
    assert family.MODEL_FILES and all(isinstance(name, str) for name in family.MODEL_FILES)
    assert family.DATA_OPTIONS <= DATA_OPTION_KEYS


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_registered_family_fulfils_the_contract(name):
    assert_fulfils(get_family(name))


def test_a_module_missing_a_hook_or_a_default_is_caught():
    family = get_family("vit")
    missing = types.ModuleType("missing")
    vars(missing).update({k: v for k, v in vars(family).items() if k != "export_merged"})
    assert not isinstance(missing, ModelFamily)
    changed = types.ModuleType("changed")
    vars(changed).update(vars(family))
    changed.load_for_run = lambda cfg, path, with_model: None  # with_model lost its default
    with pytest.raises(AssertionError, match=r"load_for_run\(with_model\)"):
        assert_fulfils(changed)


@pytest.fixture()
def toy_registered(monkeypatch):
    """The toy family of tests/models/toy_family.py registered under `toy`, as a fourth family would be."""
    monkeypatch.setitem(FAMILIES, "toy", "tests.models.toy_family")
    return get_family("toy")


def test_a_fourth_family_in_its_own_module_dry_runs(toy_registered, tmp_path, capsys):
    assert_fulfils(toy_registered)
    cfg = tiny_config_dict({"train": "t.json", "test": "e.json", "images": "."}, tmp_path / "run")
    cfg["model"] = {"family": "toy", "name_or_path": "tiny", "tiny": {"vision_hidden_size": 8}}
    cfg["adapters"] = {"language": "frozen", "vision": "dora", "projector": "frozen", "r": 2, "alpha": 4}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # encoder Linear(4, 8) with DoRA r=2: A 2*4 + B 8*2 + magnitude 8 = 32 trainable beside 40 frozen;
    # head Linear(8, 2) trained whole (a head left unset is `full`): 18; in all 50 of 90
    assert "trainable: 50 of 90 (55.56%)" in out
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()[1:] if line.split()}
    assert rows["vision"] == ["dora", "72", "32"] and rows["head"] == ["full", "18", "18"]


def test_an_unregistered_family_is_a_config_error_naming_the_known_ones(tmp_path, capsys):
    cfg = tiny_config_dict({"train": "t.json", "test": "e.json", "images": "."}, tmp_path / "run")
    cfg["model"]["family"] = "toy"
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--dry-run"]) == 2
    assert "config error: model.family: unknown model family 'toy'; known: llava, vit, vl_bart" in (
        capsys.readouterr().err)
