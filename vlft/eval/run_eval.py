"""Evaluate a finished run: base model + saved adapter, greedy generation, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.adapters.dora import use_vlft_dora
from vlft.config import RunConfig, load_config
from vlft.eval.evaluator import evaluate_vqa
from vlft.models import ModelBundle, get_family


def load_trained(run_dir: str | Path, cfg: RunConfig) -> ModelBundle:
    """The base checkpoint named in adapter_config.json with the run's adapter on top (or a full model)."""
    from peft import PeftModel

    run_dir = Path(run_dir)
    family = get_family(cfg.model.family)
    adapter_config = run_dir / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        bundle = family.load(cfg.model, base)
        bundle.model = PeftModel.from_pretrained(bundle.model, str(run_dir))
        if cfg.adapters.dora_impl == "vlft":
            use_vlft_dora(bundle.model)
    else:
        bundle = family.load(cfg.model, str(run_dir))
    bundle.model.eval()
    return bundle


def evaluate_run(run: str, overrides: list[str] | tuple = (), out_dir: str | None = None) -> dict:
    run_path = Path(run)
    if run_path.is_dir():
        cfg = load_config(run_path / "config.yaml", overrides)
        bundle = load_trained(run_path, cfg)
    else:  # a config: evaluate its model as loaded, without training
        from transformers import TrainingArguments

        from vlft.train.run import load_model, model_path

        cfg = load_config(run_path, overrides)
        args = TrainingArguments(output_dir=cfg.training.output_dir, report_to=[])
        bundle = load_model(cfg, model_path(cfg, args))
        run_path = Path(cfg.training.output_dir)
    out = Path(out_dir) if out_dir else run_path
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = evaluate_vqa(bundle.model.to(device), bundle, cfg, device=device,
                           predictions_path=out / "predictions.json")
    metrics_path = out / "metrics.json"
    existing = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    existing["eval"] = {f"eval_{k}": v for k, v in metrics.items()}
    metrics_path.write_text(json.dumps(existing, indent=2))
    return existing["eval"]
