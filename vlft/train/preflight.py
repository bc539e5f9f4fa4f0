"""Checks of the files a config names, run before any model is built: a wrong path fails in a second."""

from __future__ import annotations

import json
from pathlib import Path

from vlft.config import ConfigError, RunConfig
from vlft.data.sources import as_sources, is_hub_id

TINY = "tiny"


def _looks_like_path(name: str) -> bool:
    """A hub name is `model` or `org/model`; anything else (absolute, ./, ../, ~, deeper) is a local path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


# what marks a saved model directory: a vlft VL-BART, or a BART to pair with model.vision_tower
CONFIG_FILES = {"vl_bart": ("vl_bart.json", "config.json")}


def _check_features(cfg: RunConfig, source: str) -> None:
    if cfg.model.family != "vl_bart":
        raise ConfigError(f"{source}: data.features: pre-extracted features are read by the vl_bart family, "
                          f"not {cfg.model.family}")
    if cfg.adapters.vision != "frozen":
        raise ConfigError(f"{source}: data.features: pre-extracted features stand for a frozen vision tower; "
                          f"set adapters.vision: frozen (it is {cfg.adapters.vision}) or drop data.features")
    if not (Path(cfg.data.features) / "index.json").is_file():
        raise ConfigError(f"{source}: data.features: {cfg.data.features} has no index.json (write it with "
                          "data_prep/extract_clip_features.py)")


def check_paths(cfg: RunConfig, source: str = "config") -> None:
    """Raise ConfigError naming the key and the path for the first missing or unreadable file."""
    data = cfg.data
    if data.group_by_record and cfg.model.family != "vl_bart":
        raise ConfigError(f"{source}: data.group_by_record applies to the vl_bart family (a {cfg.model.family} "
                          "example is a whole record already)")
    for key, sources in (("data.train", data.train), ("data.eval", data.eval)):
        for item in as_sources(sources):
            if not Path(item.path).exists() and not is_hub_id(item.path):
                raise ConfigError(f"{source}: {key}: file not found: {item.path}")
    if data.features is not None:
        _check_features(cfg, source)
    elif not Path(data.image_folder).is_dir():
        raise ConfigError(f"{source}: data.image_folder: directory not found: {data.image_folder}")
    name = cfg.model.name_or_path
    if name != TINY:
        local = Path(name).expanduser()
        marks = CONFIG_FILES.get(cfg.model.family, ("config.json",))
        if local.exists() and not any((local / mark).is_file() for mark in marks):
            raise ConfigError(f"{source}: model.name_or_path: {name} has no {' or '.join(marks)} (not a saved model)")
        if not local.exists() and _looks_like_path(name):
            raise ConfigError(f"{source}: model.name_or_path: directory not found: {name}")
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
