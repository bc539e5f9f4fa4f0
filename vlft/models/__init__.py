"""Model families. One module per family; `get_family(name)` is the only way in.

A family module gives: TOWERS (tower -> module-name prefixes); load(model_cfg, path, ...);
build_tiny(...); and the hooks of a training run: build_tiny_for_run(cfg, out_dir),
load_for_run(cfg, path, with_model), train_dataset(cfg, bundle, on_error), eval_dataset(cfg, bundle, on_error),
collator(bundle) and evaluate(model, bundle, cfg, device, synced_gpus, predictions_path) -> metrics. A family that
answers in text also gives generation_options(model, bundle): the collate_fn / model_inputs with which
vlft.eval.generate.generate_answers feeds its batches to `generate` (evaluation and vlft.serve share them).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vlft.models.base import ModelBundle, ModelLoadError

# Imported on first use: a family module pulls in transformers, which `vlft score` does not need.
FAMILIES: dict[str, str] = {"llava": "vlft.models.llava", "vl_bart": "vlft.models.vl_bart",
                             "vit": "vlft.models.vit"}


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


__all__ = ["FAMILIES", "ModelBundle", "ModelLoadError", "get_family"]
