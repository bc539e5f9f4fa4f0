"""Which layers get DoRA in which tower, applied through peft."""

from vlft.adapters.setup import apply_adapters, count_parameters, format_parameter_table, trainable_summary
from vlft.adapters.towers import TowerTargets, resolve_tower_targets, tower_of

__all__ = ["TowerTargets", "apply_adapters", "count_parameters", "format_parameter_table", "resolve_tower_targets",
           "tower_of", "trainable_summary"]
