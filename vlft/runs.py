"""A finished run's directory as training left it: its saved config.

Read by evaluation, merging, analysis and serving alike, so none of them reaches into another to load a run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vlft.config import ConfigError, RunConfig, config_from_dict

# Keys an earlier vlft wrote into every run's config.yaml and that no longer exist. They never changed what a run
# did, so a saved run is read without them; in a config a person writes they are still an unknown key.
RETIRED_KEYS = (("eval", "metric"),)


def load_run_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """The config a run saved (``path``: the config.yaml in or beside the run), with ``key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for block, key in RETIRED_KEYS:
        if isinstance(raw.get(block), dict):
            raw[block].pop(key, None)
    return config_from_dict(raw, overrides, source=str(path))
