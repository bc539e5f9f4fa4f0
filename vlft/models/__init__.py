"""Model families. One module per family; `get_family(name)` is the only way in."""

from __future__ import annotations

from types import ModuleType

from vlft.models import llava
from vlft.models.base import ModelBundle, ModelLoadError

FAMILIES: dict[str, ModuleType] = {"llava": llava}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "ModelBundle", "ModelLoadError", "get_family"]
