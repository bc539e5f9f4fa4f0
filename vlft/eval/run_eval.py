"""Evaluate a finished run: base model + saved adapter, greedy generation, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.adapters.dora import use_vlft_dora
from vlft.config import RunConfig, load_config
from vlft.models import ModelBundle, get_family
from vlft.runs import load_run_config
from vlft.train.preflight import TINY


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
    from peft import PeftModel

    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir) if weights_dir else run_dir
    family = get_family(cfg.model.family)
    bundle = family.load(cfg.model, base_checkpoint(run_dir, cfg))
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


def evaluate_run(run: str, overrides: list[str] | tuple = (), out_dir: str | None = None) -> dict:
    run_path = Path(run)
    if run_path.is_dir():
        cfg = load_run_config(run_path / "config.yaml", overrides)
        bundle = load_trained(run_path, cfg)
    else:  # a config: evaluate its model as loaded, without training
        from vlft.train.run import load_model, model_path

        cfg = load_config(run_path, overrides)
        bundle = load_model(cfg, model_path(cfg))
        run_path = Path(cfg.training.output_dir)
    out = Path(out_dir) if out_dir else run_path
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = get_family(cfg.model.family).evaluate(bundle.model.to(device), bundle, cfg, device=device,
                                                    predictions_path=out / "predictions.json")
    metrics_path = out / "metrics.json"
    existing = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    existing["eval"] = {f"eval_{k}": v for k, v in metrics.items()}
    metrics_path.write_text(json.dumps(existing, indent=2))
    return existing["eval"]
