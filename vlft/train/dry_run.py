"""Check a recipe without weights: the architecture on the meta device, adapters applied, parameters counted."""

from __future__ import annotations

import tempfile

from vlft.adapters import apply_adapters, trainable_summary
from vlft.config import RunConfig
from vlft.models import get_family


def dry_run(cfg: RunConfig) -> dict:
    """Print the trainable-parameter table of cfg's model and return the totals. No weights, no network."""
    family = get_family(cfg.model.family)
    if cfg.model.name_or_path == "tiny":
        from vlft.train.run import training_texts

        with tempfile.TemporaryDirectory() as tmp:
            family.build_tiny(cfg.model.tiny, training_texts(cfg), tmp)
            config = family.architecture_config(tmp)
    else:
        config = family.architecture_config(cfg.model.name_or_path)
    model = family.build_on_meta(config)
    model = apply_adapters(model, family.TOWERS, cfg.adapters)
    table, summary = trainable_summary(model, family.TOWERS, cfg.adapters)
    print(f"dry run of {cfg.model.name_or_path} (meta device, no weights loaded):\n{table}")
    print(f"trainable: {summary['trainable_params']:,} of {summary['total_params']:,} "
          f"({summary['trainable_percent']:.2f}%)")
    return summary
