"""The transformers Trainer, taught a projector learning rate, VQA evaluation, skipped-record counts,
a stop on a non-finite loss, and checkpoints that appear whole or not at all."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import rotate_checkpoints

from vlft.adapters.setup import base_param_name
from vlft.adapters.towers import tower_of
from vlft.config import ConfigError, RunConfig
from vlft.data.sampling import ModalityLengthGroupedSampler
from vlft.data.skips import SkipLog
from vlft.eval.evaluator import evaluate_model
from vlft.models import ModelBundle
from vlft.models.contract import ModelFamily
from vlft.ranks import distributed, is_node_main
from vlft.train.checkpoints import STAGING, latest_complete_checkpoint
from vlft.train.errors import NonFiniteLoss


def _name_deepspeed_tag(checkpoint: Path) -> None:
    """DeepSpeed names the tag to load in `latest` on the first rank only; with a disk per node, each node's copy
    of the checkpoint needs it too."""
    tags = sorted(p.name for p in checkpoint.glob("global_step*") if p.is_dir())
    if tags and not (checkpoint / "latest").exists():
        (checkpoint / "latest").write_text(tags[-1])


class _ReportSkips(TrainerCallback):
    def __init__(self, trainer: VlftTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        log = self.trainer.gathered_skips()
        if self.trainer.is_world_process_zero() and self.trainer.skips is not None:
            print(f"epoch {state.epoch:.2f}: {log.summary()}", flush=True)


class VlftTrainer(Trainer):
    def __init__(self, *args, family: ModelFamily, bundle: ModelBundle, run_config: RunConfig,
                 skips: SkipLog | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.family, self.bundle = family, bundle
        self.run_config = run_config
        self.skips = skips  # None unless data.on_error is skip
        self.add_callback(_ReportSkips(self))
        self._node_writers = self._node_writer_group()

    def _node_writer_group(self):
        """The first rank of every node, as a process group, when each node writes its own copy of weights that
        ZeRO-3 consolidates on the first rank only; else None."""
        if not (self.args.save_on_each_node and is_deepspeed_zero3_enabled() and distributed()):
            return None
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, (dist.get_rank(), is_node_main()))
        writers = [rank for rank, first in ranks if first]
        return dist.new_group(writers) if len(writers) > 1 else None

    def _save(self, output_dir=None, state_dict=None) -> None:
        """Weights of every save: with a disk per node under ZeRO-3, the state dict DeepSpeed gathered on the first
        rank goes to every node's first rank (elsewhere it would write the empty partitions it holds)."""
        if self._node_writers is not None and is_node_main():
            box = [state_dict]
            dist.broadcast_object_list(box, src=0, group=self._node_writers)
            state_dict = box[0]
        super()._save(output_dir, state_dict)

    def gathered_skips(self) -> SkipLog:
        """Skipped training records over all ranks (collective: every rank must call it)."""
        return (self.skips or SkipLog()).gathered()

    def _get_train_sampler(self, train_dataset=None):
        """data.group_by_modality_length: LLaVA's grouped order; data.shuffle false: file order."""
        data = self.run_config.data
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if data.group_by_modality_length:
            if not hasattr(dataset, "modality_lengths"):
                raise ConfigError(f"data.group_by_modality_length: the {self.run_config.model.family} family's "
                                  "training examples have no modality and length to group by")
            args = self.args
            group = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
            return ModalityLengthGroupedSampler(*dataset.modality_lengths(), group, args.data_seed or args.seed)
        if not data.shuffle:
            return SequentialSampler(dataset)
        return super()._get_train_sampler(*([train_dataset] if train_dataset is not None else []))

    def compute_loss(self, model, inputs, *args, **kwargs):
        skipped = inputs.pop("skipped", None)
        if skipped:
            self.skips.extend(skipped)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0)
        if distributed():  # every rank stops at the same step
            bad = bad.to(self.args.device)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            value = loss.detach().float().sum().item()
            found = f"{value}" if not math.isfinite(value) else "not finite on another rank"
            last = latest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLoss(
                f"the loss is {found} at step {self.state.global_step + 1}; training stopped before that step's "
                f"update. Last good checkpoint: {last or 'none yet'}. Lower training.lr or check the data; "
                f"training.resume=auto continues from the last good checkpoint")
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        """Write checkpoint-N under a staging directory, then rename it into place: a kill during the
        save leaves no checkpoint-N at all, never a half-written one."""
        run_dir = Path(self._get_output_dir(trial=trial))
        staging = run_dir / STAGING
        get_output_dir = self._get_output_dir
        self._get_output_dir = lambda trial=None: str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = get_output_dir
        name = f"checkpoint-{self.state.global_step}"
        self.accelerator.wait_for_everyone()  # every rank has written its shard
        if self.args.should_save:
            _name_deepspeed_tag(staging / name)
            final = run_dir / name
            if final.exists():  # the same step saved again after a resume
                shutil.rmtree(final)
            os.replace(staging / name, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

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
        """The family's evaluation of data.eval (LLaVA: generation scored with VQA accuracy; ViT: top-1)."""
        if not self.run_config.data.eval:
            return {}
        predictions = Path(self.args.output_dir) / "predictions.json" if self.args.should_save else None
        metrics = evaluate_model(self.family, self.model, self.bundle, self.run_config, device=self.args.device,
                                 synced_gpus=is_deepspeed_zero3_enabled(), predictions_path=predictions)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
