"""Typed run configuration: YAML -> dataclasses with strict keys.

Every block of a config file is one dataclass (``schema``). ``load_config(path, overrides)`` (``loading``) reads
YAML with the safe loader, applies ``key=value`` overrides (dotted keys, values parsed as YAML scalars), and
rejects unknown keys and wrong types with a message that names the file, the key, and the closest valid key.
"""

from vlft.config.loading import KNOWN_ALIASES, config_from_dict, config_to_dict, explain, load_config, read_yaml
from vlft.config.schema import (
    AdaptersConfig,
    ConfigError,
    DataConfig,
    DataSource,
    EvalConfig,
    ModelConfig,
    QuantizationConfig,
    RunConfig,
    SweepConfig,
    TinyModelConfig,
    TowerMethod,
    TrainingConfig,
    VideoConfig,
)

__all__ = ["KNOWN_ALIASES", "AdaptersConfig", "ConfigError", "DataConfig", "DataSource", "EvalConfig",
           "ModelConfig", "QuantizationConfig", "RunConfig", "SweepConfig", "TinyModelConfig", "TowerMethod",
           "TrainingConfig", "VideoConfig", "config_from_dict", "config_to_dict", "explain", "load_config",
           "read_yaml"]
