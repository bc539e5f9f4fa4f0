"""The transformers Trainer, taught two things: a projector learning rate and VQA evaluation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer
from transformers.integrations import is_deepspeed_zero3_enabled

from vlft.adapters.setup import base_param_name
from vlft.adapters.towers import tower_of
from vlft.config import RunConfig
from vlft.eval.evaluator import evaluate_vqa
from vlft.models.base import ModelBundle


class VlftTrainer(Trainer):
    def __init__(self, *args, bundle: ModelBundle, run_config: RunConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.bundle = bundle
        self.run_config = run_config

    def create_optimizer(self, model=None):
        """AdamW with the projector in its own group when training.projector_lr is set (LLaVA's mm_projector_lr)."""
        if self.optimizer is not None:
            return self.optimizer
        cfg = self.run_config.training
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            in_projector = tower_of(base_param_name(name), self.bundle.towers) == "projector"
            lr = cfg.projector_lr if (in_projector and cfg.projector_lr is not None) else cfg.lr
            no_decay = param.ndim < 2 or "lora_magnitude_vector" in name
            groups.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(param)
        param_groups = [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, lr=cfg.lr, **optimizer_kwargs)
        return self.optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Greedy generation over data.eval scored with the official VQA accuracy."""
        if not self.run_config.data.eval:
            return {}
        predictions = Path(self.args.output_dir) / "predictions.json" if self.is_world_process_zero() else None
        metrics = evaluate_vqa(self.model, self.bundle, self.run_config, device=self.args.device,
                               synced_gpus=is_deepspeed_zero3_enabled(), predictions_path=predictions)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
