"""Find and load the model a directory holds: a run (the adapter on its base model, unmerged, or a fully trained
model) or a `vlft merge` output, with the run's config, which says how its evaluation encoded prompts, read
images and sampled video frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vlft.config import RunConfig
from vlft.merge import MERGE_INFO, RUN_CONFIG
from vlft.models import ModelBundle, ModelLoadError, get_family
from vlft.models.contract import AnswersInText, ClassifiesImages
from vlft.runs import load_run_config

# What a finished run leaves beside its config.yaml: a peft adapter, or a fully trained model's weights.
RUN_WEIGHTS = ("adapter_config.json", "model.safetensors", "model.safetensors.index.json")


@dataclass
class ServedModel:
    """A trained model ready to answer, with the run config its answers follow."""

    directory: Path
    kind: str  # "run" or "merged"
    cfg: RunConfig
    bundle: ModelBundle
    device: str

    @property
    def family(self) -> ModuleType:
        return get_family(self.cfg.model.family)

    @property
    def labels(self) -> list[str] | None:
        """The label names of an image classifier (ViT); None for a model that answers in text."""
        return self.family.label_names(self.bundle) if isinstance(self.family, ClassifiesImages) else None

    def describe(self) -> str:
        how = "merged" if self.kind == "merged" else (
            "adapter on its base, unmerged" if (self.directory / "adapter_config.json").is_file() else "full weights")
        return f"{self.directory} ({self.cfg.model.family}, {how}, {self.device})"


def answers_in_text(family: ModuleType) -> bool:
    """Whether a family generates text (LLaVA, VL-BART) rather than classifying images (ViT)."""
    return isinstance(family, AnswersInText)


def directory_kind(directory: str | Path) -> str:
    """"run" or "merged"; anything else is refused with one line naming the directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such directory")
    if (directory / MERGE_INFO).is_file():
        return "merged"
    if (directory / "config.yaml").is_file() and any((directory / name).is_file() for name in RUN_WEIGHTS):
        return "run"
    raise ModelLoadError(f"{directory}: neither a finished vlft run (config.yaml beside the trained adapter or "
                         f"weights) nor a model written by `vlft merge` ({MERGE_INFO})")


def served_config(directory: str | Path, kind: str) -> RunConfig:
    """The run's config: the run's own, or the copy `vlft merge` keeps beside the merged weights (a model merged
    before that copy existed falls back to its run's config, if the run is still there)."""
    directory = Path(directory)
    if kind == "run":
        return load_run_config(directory / "config.yaml")
    if (directory / RUN_CONFIG).is_file():
        return load_run_config(directory / RUN_CONFIG)
    run_config = Path(json.loads((directory / MERGE_INFO).read_text())["run"]) / "config.yaml"
    if run_config.is_file():
        return load_run_config(run_config)
    raise ModelLoadError(f"{directory}: merged without its run's config ({RUN_CONFIG}) and {run_config} is gone; "
                         "merge the run again")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_served(directory: str | Path, device: str | None = None) -> ServedModel:
    """The model of a run (through the loading `vlft eval` uses) or of a merged directory (through the family's
    own `load`, which reads the format `vlft merge` writes), in eval mode on ``device``."""
    from vlft.runs import load_trained

    directory = Path(directory)
    kind = directory_kind(directory)
    cfg = served_config(directory, kind)
    if kind == "run":
        bundle = load_trained(directory, cfg)
    else:
        bundle = get_family(cfg.model.family).load(cfg.model, str(directory))
    device = device or default_device()
    bundle.model = bundle.model.to(device).eval()
    return ServedModel(directory=directory, kind=kind, cfg=cfg, bundle=bundle, device=device)
