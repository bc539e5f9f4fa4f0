"""Check a recipe without its weights: the model built (a named LLaVA on the meta device; a tiny build of any
family from its config), adapters applied, trainable parameters counted per tower."""

from __future__ import annotations

import tempfile

from vlft.adapters import apply_adapters, trainable_summary
from vlft.config import ConfigError, RunConfig
from vlft.models import get_family
from vlft.models.contract import BuildsOnMeta, ChecksTokenBudget, ModelFamily
from vlft.models.tiny import TINY


def _model_without_weights(cfg: RunConfig, family: ModelFamily, tmp: str):
    if cfg.model.name_or_path == TINY:  # tiny builds are small: build, save and load as a run would
        path = family.build_tiny_for_run(cfg, tmp)
        return family.load_for_run(cfg, str(path)).model
    if not isinstance(family, BuildsOnMeta):
        raise ConfigError(f"--dry-run of a named {cfg.model.family} model is not supported (it needs the "
                          "weights to know the architecture); it works for llava names and for tiny builds")
    return family.build_on_meta(family.architecture_config(cfg.model.name_or_path))


def dry_run(cfg: RunConfig) -> dict:
    """Print the trainable-parameter table of cfg's model and return the totals. No weights, no network."""
    family = get_family(cfg.model.family)
    with tempfile.TemporaryDirectory() as tmp:
        model = apply_adapters(_model_without_weights(cfg, family, tmp), family.TOWERS, cfg.adapters)
    table, summary = trainable_summary(model, family.TOWERS, cfg.adapters)
    where = "meta device, no weights loaded" if cfg.model.name_or_path != TINY else "tiny random-init build"
    print(f"dry run of {cfg.model.name_or_path} ({where}):\n{table}")
    print(f"trainable: {summary['trainable_params']:,} of {summary['total_params']:,} "
          f"({summary['trainable_percent']:.2f}%)")
    if isinstance(family, ChecksTokenBudget):
        budget = family.check_token_budget(_config_of(model), cfg)
        pooled = "pooled 2x2" if budget["pooled"] else "unpooled"
        print(f"token budget: one video = {budget['frames']} frames x {budget['tokens_per_frame']} tokens "
              f"({pooled}) = {budget['video_tokens']} of data.max_length={budget['max_length']}")
        summary["token_budget"] = budget
    return summary


def _config_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
