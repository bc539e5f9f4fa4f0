"""One training run, top to bottom: arguments -> model -> adapters -> data -> Trainer -> files.

`train(cfg)` is what `scripts/train.py` and `vlft train` call, in one process or under the
`deepspeed` launcher (the Trainer's DeepSpeed integration drives ZeRO).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from transformers import TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from vlft.adapters import apply_adapters, trainable_summary
from vlft.config import ConfigError, RunConfig, config_to_dict
from vlft.models import ModelBundle, get_family
from vlft.models.contract import ModelFamily
from vlft.models.tiny import model_path, zero3_init_paused
from vlft.ranks import local_world_size, log_main
from vlft.train.checkpoints import check_checkpoint_is_safe, discard_partial_checkpoint, latest_complete_checkpoint
from vlft.train.nodes import check_same_resume_step, gather_from_nodes, node_log, output_dir_is_shared
from vlft.train.preflight import check_paths
from vlft.train.report import peak_memory_mb, write_training_report
from vlft.train.trainer import VlftTrainer


def deepspeed_config(path: str | None, on_each_node: bool) -> str | dict | None:
    """The DeepSpeed config; with a disk per node DeepSpeed also writes its model states on every node
    (`checkpoint.use_node_local_storage`), not only on the first."""
    if not path or not on_each_node:
        return path
    config = json.loads(Path(path).read_text())
    config.setdefault("checkpoint", {})["use_node_local_storage"] = True
    return config


def build_training_arguments(cfg: RunConfig, on_each_node: bool = False) -> TrainingArguments:
    """Built before the model is loaded: with ZeRO-3 this makes from_pretrained load partitioned.
    ``on_each_node``: every node writes checkpoints and outputs into its own output_dir.
    The warmup ratio goes in as `warmup_steps`: transformers 5 (pyproject's floor) reads a value below 1 there
    as a fraction of the steps, and has no `warmup_ratio` any more."""
    t = cfg.training
    return TrainingArguments(
        output_dir=t.output_dir, seed=t.seed, data_seed=t.seed, num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.lr, weight_decay=t.weight_decay, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm, bf16=t.bf16, fp16=t.fp16, logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps > 0 and cfg.data.eval else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None, deepspeed=deepspeed_config(t.deepspeed, on_each_node),
        report_to=t.report_to, save_on_each_node=on_each_node, ddp_timeout=t.ddp_timeout,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.model.gradient_checkpointing else None,
        dataloader_num_workers=cfg.data.num_workers, remove_unused_columns=False, label_names=["labels"],
        use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False, save_only_model=False)


def load_model(cfg: RunConfig, family: ModelFamily, path: str) -> ModelBundle:
    if adapts_conv2d(cfg) and is_deepspeed_zero3_enabled():
        # peft reads a Conv2d kernel's shape when wrapping it, and ZeRO-3's partitioned loading leaves it
        # flat: load whole weights; deepspeed.initialize partitions them afterwards.
        log_main("ZeRO-3: loading whole weights (adapters on the vision tower's Conv2d), partitioned at initialize")
        with zero3_init_paused():
            return family.load_for_run(cfg, path)
    return family.load_for_run(cfg, path)


def training_data(cfg: RunConfig, family: ModelFamily, path: str):
    """The training records checked and tokenized with the model's tokenizer (once: later launches read them
    from the data cache), before the model's weights are loaded."""
    train_set = family.train_dataset(cfg, family.load_for_run(cfg, path, with_model=False))
    if train_set.skips is not None:
        log_main(f"{train_set.path}: {len(train_set)} examples kept; at load, {train_set.skips.summary()}")
    return train_set


def check_one_trainable_dtype(model: torch.nn.Module, cfg: RunConfig) -> None:
    """DeepSpeed's ZeRO flattens the trainable weights into one buffer of one dtype: ZeRO-3 refuses a mix and
    ZeRO-2 upcasts it, so a bf16 layer trained in full then meets its bf16 input with an fp32 weight. A bf16
    base gives such a mix (peft keeps LoRA/DoRA adapters fp32) unless DeepSpeed's own bf16 or fp16 mode casts
    everything to one dtype (and keeps fp32 master weights): say so before DeepSpeed starts."""
    t = cfg.training
    if not t.deepspeed or t.bf16 or t.fp16:
        return
    first: dict[torch.dtype, str] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            first.setdefault(param.dtype, name)
    if len(first) > 1:
        found = ", ".join(f"{name} ({str(dtype).removeprefix('torch.')})" for dtype, name in first.items())
        raise ConfigError(f"training.deepspeed: the trainable weights come in {len(first)} dtypes, e.g. {found}; "
                          f"ZeRO trains one. With model.dtype {cfg.model.dtype} set training.bf16: true "
                          "(DeepSpeed then keeps fp32 master weights), or model.dtype: float32")


def adapts_conv2d(cfg: RunConfig) -> bool:
    """Whether lora/dora reaches a vision tower, whose patch embedding is a Conv2d."""
    return cfg.adapters.vision in ("lora", "dora") or bool(cfg.adapters.target_regex)


def resolve_resume(cfg: RunConfig) -> str | None:
    """The checkpoint to resume from: the same step on every node, or the run stops naming each node's."""
    resume = cfg.training.resume
    if resume in (None, "", "none"):
        resume = None
    elif resume == "auto":
        resume = latest_complete_checkpoint(cfg.training.output_dir)
    check_same_resume_step(resume, cfg.training.output_dir)
    return resume


def outputs_on_each_node(cfg: RunConfig) -> bool:
    """Whether every node writes checkpoints and outputs into its own output_dir (training.save_on_each_node;
    null: when output_dir is not one directory that all nodes see). Collective."""
    each = cfg.training.save_on_each_node
    if each is None:
        each = not output_dir_is_shared(cfg.training.output_dir)
        if each:
            log_main(f"training.output_dir {cfg.training.output_dir} is on each node's own disk: every node "
                     "writes its checkpoints and outputs there")
    return each


def save_outputs(trainer: VlftTrainer, bundle: ModelBundle, cfg: RunConfig, metrics: dict) -> None:
    """Adapter (peft format, projector included), processor, resolved config and metrics."""
    out = Path(cfg.training.output_dir)
    trainer.save_model(str(out))
    if trainer.args.should_save:  # the first process, or with a disk per node every node's first
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(out)
        bundle.image_processor.save_pretrained(out)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


@dataclass
class TrainResult:
    metrics: dict  # what metrics.json holds
    model: torch.nn.Module  # the trained model (a PeftModel when adapters were used)
    bundle: ModelBundle


def limit_cpu_threads() -> None:
    """Several ranks on one CPU host would each start one thread per core and fight for them."""
    local_world = local_world_size()
    if local_world > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def remove_cpu_allreduce_buffer_at_exit() -> None:
    """DeepSpeed's shared-memory allreduce (CPU accelerator, all ranks on one host) creates a 66 MB buffer per
    rank in /dev/shm and never removes it: every run would leave its buffers behind, in memory, until the host
    runs out of it. Each rank removes its own at exit (a peer's mapping of it stays valid until it exits)."""
    if torch.cuda.is_available() or not Path("/dev/shm").is_dir():
        return
    env = os.environ
    where = f"{env.get('MASTER_ADDR')}_{env.get('MASTER_PORT')}_{env.get('RANK')}"
    buffer = Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{where}"  # DeepSpeed's shm.cpp naming
    atexit.register(lambda: buffer.unlink(missing_ok=True))


def set_collective_timeout(seconds: int) -> None:
    """training.ddp_timeout on the process group: transformers hands TrainingArguments.ddp_timeout to it on GPUs
    only, and CPU ranks kept the 30-minute default."""
    if dist.is_available() and dist.is_initialized():
        c10d = dist.distributed_c10d
        (getattr(c10d, "set_timeout", None) or c10d._set_pg_timeout)(timedelta(seconds=seconds))


def train(cfg: RunConfig) -> TrainResult:
    """Run training (and evaluation) as configured; metrics also go to output_dir/metrics.json."""
    start = time.time()
    family = get_family(cfg.model.family)  # the one look-up of the run: everything below receives it
    check_paths(cfg, family)
    limit_cpu_threads()
    set_seed(cfg.training.seed)
    path = model_path(cfg, family)  # before torch.distributed starts, which TrainingArguments with DeepSpeed does
    args = build_training_arguments(cfg)
    _ = args.device  # sets up torch.distributed now: ZeRO-3's partitioned from_pretrained needs the world size
    set_collective_timeout(cfg.training.ddp_timeout)
    if cfg.training.deepspeed:
        import deepspeed

        deepspeed.init_distributed()  # ...and asks deepspeed.comm for it, which must know the process group
        remove_cpu_allreduce_buffer_at_exit()
    nodes = len(gather_from_nodes(None))  # also the barrier after which the tiny base model is whole on every node
    if outputs_on_each_node(cfg):
        args = build_training_arguments(cfg, on_each_node=True)
    if args.should_save and (partial := discard_partial_checkpoint(cfg.training.output_dir)):
        node_log(f"removed a checkpoint left half-written by a killed run: {partial}", nodes)
    resume = resolve_resume(cfg)  # before the model is built: nodes that disagree stop at once
    if resume:
        check_checkpoint_is_safe(resume)
        node_log(f"resuming from {resume}", nodes)
    train_set = training_data(cfg, family, path)
    bundle = load_model(cfg, family, path)
    model = apply_adapters(bundle.model, bundle.towers, cfg.adapters)
    check_one_trainable_dtype(model, cfg)
    table, params = trainable_summary(model, bundle.towers, cfg.adapters)
    log_main(f"trainable parameters ({cfg.model.name_or_path}):\n{table}")
    trainer = VlftTrainer(model=model, args=args, train_dataset=train_set, family=family, bundle=bundle,
                          run_config=cfg, skips=train_set.skips, data_collator=family.collator(bundle))
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**params, "world_size": args.world_size, "train_loss": result.training_loss,
               "global_step": result.global_step, "train_runtime_s": round(result.metrics["train_runtime"], 2),
               "resumed_from": resume}
    if train_set.skips is not None:
        skips = trainer.gathered_skips()
        metrics["skipped_records"] = skips.counts()
        log_main(f"training data: {skips.summary()}")
    if cfg.eval.at_end and cfg.data.eval:
        metrics["eval"] = trainer.evaluate()
    metrics["wall_time_s"] = round(time.time() - start, 2)
    metrics.update(peak_memory_mb())
    save_outputs(trainer, bundle, cfg, metrics)
    if trainer.args.should_save:
        write_training_report(trainer.state.log_history, cfg.training.output_dir)
    log_main(json.dumps(metrics, indent=2))
    return TrainResult(metrics=metrics, model=model, bundle=bundle)
