"""A finished run's directory as training left it: its saved config, its base checkpoint, its trained model.

Read by evaluation, merging, analysis and serving alike, so none of them reaches into another to load a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.config import RunConfig, config_from_dict, read_yaml
from vlft.models import ModelBundle, get_family
from vlft.models.tiny import TINY

# Keys an earlier vlft wrote into every run's config.yaml and that no longer exist. They never changed what a run
# did, so a saved run is read without them; in a config a person writes they are still an unknown key.
RETIRED_KEYS = (("eval", "metric"),)


def load_run_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """The config a run saved (``path``: the config.yaml in or beside the run), with ``key=value`` overrides."""
    raw = read_yaml(path)
    for block, key in RETIRED_KEYS:
        if isinstance(raw.get(block), dict):
            raw[block].pop(key, None)
    return config_from_dict(raw, overrides, source=str(path))


def base_checkpoint(run_dir: Path, cfg: RunConfig) -> str:
    """The base model a run started from: adapter_config.json names it; a full run's config does."""
    adapter_config = run_dir / "adapter_config.json"
    named = json.loads(adapter_config.read_text()).get("base_model_name_or_path") if adapter_config.is_file() else None
    if named:  # peft records it for transformers models (not for VL-BART and ViT)
        return named
    if cfg.model.name_or_path == TINY:
        return str(run_dir.resolve() / "base_model")  # built there by the run
    return cfg.model.name_or_path


def load_weights_into(model: torch.nn.Module, weights_dir: Path) -> None:
    """A full run's trained weights into the base model, every key checked. A transformers model was saved
    with save_pretrained (its own key names on disk): it goes back through from_pretrained."""
    from safetensors.torch import load_model
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and (weights_dir / "config.json").is_file():
        trained = type(model).from_pretrained(weights_dir, dtype=model.dtype)
        model.load_state_dict(trained.state_dict(), strict=True)
        return
    path = weights_dir / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{weights_dir}: neither adapter_config.json nor model.safetensors is there")
    load_model(model, str(path), strict=True)


def load_trained(run_dir: str | Path, cfg: RunConfig, weights_dir: str | Path | None = None) -> ModelBundle:
    """The base checkpoint with the run's adapter on top (a PeftModel), or with its fully trained weights.
    ``weights_dir``: a checkpoint-N directory of the run instead of its final weights."""
    # peft (and what it pulls in) is imported on use: reading a run's config, or refusing a directory that is
    # not a run, stays quick
    from peft import PeftModel

    from vlft.adapters.dora import use_vlft_dora

    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir) if weights_dir else run_dir
    family = get_family(cfg.model.family)
    bundle = family.load_for_run(cfg, base_checkpoint(run_dir, cfg))
    if (weights_dir / "adapter_config.json").is_file():
        bundle.model = PeftModel.from_pretrained(bundle.model, str(weights_dir))
        if cfg.adapters.dora_impl == "vlft":
            use_vlft_dora(bundle.model)
    else:
        load_weights_into(bundle.model, weights_dir)
    bundle.model.eval()
    return bundle


def with_adapters_merged(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """(the model with its DoRA/LoRA adapters folded in by peft's own merge, whether it had any)."""
    from peft import PeftModel

    return (model.merge_and_unload(), True) if isinstance(model, PeftModel) else (model, False)
