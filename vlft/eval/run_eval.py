"""`vlft eval`: evaluate a finished run (base model + saved adapter) or a config's model as loaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlft.config import load_config
from vlft.eval.evaluator import evaluate_model
from vlft.models import get_family
from vlft.models.tiny import model_path
from vlft.runs import load_run_config, load_trained


def evaluate_run(run: str, overrides: list[str] | tuple = (), out_dir: str | None = None) -> dict:
    """Metrics of ``run`` (a run directory, or a config whose model is evaluated without training), also written
    into metrics.json and predictions.json there or in ``out_dir``."""
    run_path = Path(run)
    if run_path.is_dir():
        cfg = load_run_config(run_path / "config.yaml", overrides)
        family = get_family(cfg.model.family)
        bundle = load_trained(run_path, cfg)
    else:
        cfg = load_config(run_path, overrides)
        family = get_family(cfg.model.family)
        bundle = family.load_for_run(cfg, model_path(cfg, family))
        run_path = Path(cfg.training.output_dir)
    out = Path(out_dir) if out_dir else run_path
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = evaluate_model(family, bundle.model.to(device), bundle, cfg, device=device,
                             predictions_path=out / "predictions.json")
    metrics_path = out / "metrics.json"
    existing = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    existing["eval"] = {f"eval_{k}": v for k, v in metrics.items()}
    metrics_path.write_text(json.dumps(existing, indent=2))
    return existing["eval"]
