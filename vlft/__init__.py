"""vlft: fine-tune vision-language models with DoRA on both towers."""

from vlft.config import ConfigError, RunConfig, load_config

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunConfig", "load_config", "__version__"]
