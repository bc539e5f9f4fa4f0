"""Model families. One module per family; `get_family(name)` is the only way in."""

from __future__ import annotations

import importlib
from types import ModuleType

from vlft.models.base import ModelBundle, ModelLoadError

# Imported on first use: a family module pulls in transformers, which `vlft score` does not need.
FAMILIES: dict[str, str] = {"llava": "vlft.models.llava"}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


__all__ = ["FAMILIES", "ModelBundle", "ModelLoadError", "get_family"]
