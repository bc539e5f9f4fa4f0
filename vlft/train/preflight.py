"""Checks of the files a config names, run before any model is built: a wrong path fails in a second."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.config import ConfigError, RunConfig
from vlft.data.sources import as_sources, is_hub_id
from vlft.models import FAMILIES, family_module, get_family
from vlft.models.contract import ModelFamily
from vlft.models.tiny import TINY

DATA_OPTION_KEYS = frozenset({"features", "group_by_record"})  # the data keys only some families read

def _looks_like_path(name: str) -> bool:
    """A hub name is `model` or `org/model`; anything else (absolute, ./, ../, ~, deeper) is a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _check_data_options(cfg: RunConfig, family: ModelFamily, source: str) -> None:
    """An optional data key set for a family that would ignore it is an error, not a silent no-op."""
    for key in sorted(DATA_OPTION_KEYS - family.DATA_OPTIONS):
        if getattr(cfg.data, key):
            readers = [name for name in FAMILIES if key in get_family(name).DATA_OPTIONS]
            raise ConfigError(f"{source}: data.{key}: the {cfg.model.family} family does not read it (read by: "
                              f"{', '.join(readers) or 'no family'})")


def _check_features(cfg: RunConfig, source: str) -> None:
    if cfg.adapters.vision != "frozen":
        raise ConfigError(f"{source}: data.features: pre-extracted features stand for a frozen vision tower; "
                          f"set adapters.vision: frozen (it is {cfg.adapters.vision}) or drop data.features")
    if not (Path(cfg.data.features) / "index.json").is_file():
        raise ConfigError(f"{source}: data.features: {cfg.data.features} has no index.json (write it with "
                          "data_prep/extract_clip_features.py)")


def check_paths(cfg: RunConfig, family: ModelFamily | None = None, source: str = "config") -> None:
    """Raise ConfigError naming the key and the path for the first missing or unreadable file, or for a data
    option the family does not read. Plain paths are checked before the family module (and with it
    transformers) is imported, so that a typo fails in a second."""
    family_module(cfg.model.family)  # an unknown family is named before any file is looked at
    _check_files(cfg, source)
    family = family or get_family(cfg.model.family)
    _check_data_options(cfg, family, source)
    if cfg.data.features is not None:
        _check_features(cfg, source)
    name = cfg.model.name_or_path
    if name != TINY:
        local = Path(name).expanduser()
        marks = family.MODEL_FILES
        if local.exists() and not any((local / mark).is_file() for mark in marks):
            raise ConfigError(f"{source}: model.name_or_path: {name} has no {' or '.join(marks)} (not a saved model)")
        if not local.exists() and _looks_like_path(name):
            raise ConfigError(f"{source}: model.name_or_path: directory not found: {name}")


def _check_files(cfg: RunConfig, source: str) -> None:
    data = cfg.data
    for key, sources in (("data.train", data.train), ("data.eval", data.eval)):
        for item in as_sources(sources):
            if not Path(item.path).exists() and not is_hub_id(item.path):
                raise ConfigError(f"{source}: {key}: file not found: {item.path}")
    if data.features is None and not Path(data.image_folder).is_dir():
        raise ConfigError(f"{source}: data.image_folder: directory not found: {data.image_folder}")
    if cfg.training.deepspeed:
        path = Path(cfg.training.deepspeed)
        if not path.is_file():
            raise ConfigError(f"{source}: training.deepspeed: file not found: {path}")
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}: training.deepspeed: {path} is not valid JSON: {err}") from None
    resume = cfg.training.resume
    if resume not in (None, "", "none", "auto") and not Path(resume).is_dir():
        raise ConfigError(f"{source}: training.resume: checkpoint directory not found: {resume}")
