"""Model families. One module per family, registered by name below; `get_family(name)` is the only way in.

What a family module gives is written down in vlft/models/contract.py (`ModelFamily` and the optional abilities);
tests/models/test_contract.py checks every registered family against it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vlft.config import ConfigError
from vlft.models.base import ModelBundle, ModelLoadError

# Imported on first use: a family module pulls in transformers, which `vlft score` does not need. A closed table
# of module paths, so that a config can never name an arbitrary module to import.
FAMILIES: dict[str, str] = {"llava": "vlft.models.llava", "vl_bart": "vlft.models.vl_bart",
                             "vit": "vlft.models.vit"}


def family_module(name: str) -> str:
    """The module path registered as ``name``, without importing it."""
    if name not in FAMILIES:
        raise ConfigError(f"model.family: unknown model family '{name}'; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def get_family(name: str) -> ModuleType:
    """The family module registered as ``name`` (a vlft.models.contract.ModelFamily)."""
    return importlib.import_module(family_module(name))


__all__ = ["FAMILIES", "ModelBundle", "ModelLoadError", "family_module", "get_family"]
