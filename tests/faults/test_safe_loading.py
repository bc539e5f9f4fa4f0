"""Nothing a user loads runs code: YAML goes through the safe loader, a checkpoint that would unpickle a callable
is refused before anything reads it, and the package never loads pickles or remote code unsafely."""

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_config_dict
from vlft.cli import main
from vlft.train.checkpoints import check_checkpoint_is_safe


class Payload:
    """Unpickling this runs a shell command, as a hostile checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_yaml_with_a_python_tag_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f'data: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert main(["train", str(path)]) == 2
    assert f"config error: {path}: not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


def test_model_family_is_a_closed_list_not_an_import_path(tmp_path, capsys):
    path = tmp_path / "family.yaml"
    cfg = tiny_config_dict({"train": "t.json", "test": "e.json", "images": "."}, tmp_path / "run")
    cfg["model"]["family"] = "os.system"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "config error: model.family: unknown model family 'os.system'; known: llava, vit, vl_bart" in err
    assert "Traceback" not in err


def write_checkpoint(directory: Path, poisoned: str | None, marker: Path) -> Path:
    directory.mkdir(parents=True)
    torch.save({"state": {}, "param_groups": []}, directory / "optimizer.pt")
    torch.save({"python": torch.random.get_rng_state()}, directory / "rng_state.pth")
    if poisoned:
        torch.save({"state": Payload(marker)}, directory / poisoned)
    return directory


@pytest.mark.parametrize("poisoned", ["optimizer.pt", "rng_state.pth", "global_step4/zero_pp_rank_0_optim_states.pt"])
def test_a_checkpoint_that_would_run_code_is_refused_naming_file_and_global(tmp_path, poisoned):
    marker = tmp_path / "ran"
    checkpoint = write_checkpoint(tmp_path / "ckpt", None, marker)
    (checkpoint / "global_step4").mkdir()
    torch.save({"state": Payload(marker)}, checkpoint / poisoned)
    with pytest.raises(ValueError, match=rf"{re.escape(str(checkpoint / poisoned))}: refusing to load: it names "
                                         r"posix.system"):
        check_checkpoint_is_safe(checkpoint)
    assert not marker.exists()


def test_a_clean_checkpoint_passes(tmp_path):
    check_checkpoint_is_safe(write_checkpoint(tmp_path / "ckpt", None, tmp_path / "ran"))


def test_resume_from_a_poisoned_checkpoint_stops_before_loading_it(shapes_data, tmp_path, capsys):
    marker = tmp_path / "ran"
    checkpoint = write_checkpoint(tmp_path / "run" / "checkpoint-2", "scheduler.pt", marker)
    (checkpoint / "trainer_state.json").write_text("{}")
    cfg = tiny_config_dict(shapes_data, tmp_path / "run", resume="auto")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {checkpoint / 'scheduler.pt'}: refusing to load: it names posix.system" in err
    assert not marker.exists()


UNSAFE = {
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"yaml\.(load|unsafe_load|full_load)\(": "a YAML loader other than safe_load",
    r"trust_remote_code\s*=\s*True": "remote code",
    r"pickle\.loads?\(": "pickle",
    r"(?<![.\w])(eval|exec)\(": "eval/exec",
}


def test_the_package_has_no_unsafe_loading_calls():
    found = []
    for path in sorted((REPO / "vlft").rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py")):
        text = path.read_text()
        found += [f"{path.name}: {what}" for pattern, what in UNSAFE.items() if re.search(pattern, text)]
    assert not found
