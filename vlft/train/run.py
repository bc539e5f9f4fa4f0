"""One training run, top to bottom: arguments -> model -> adapters -> data -> Trainer -> files.

`train(cfg)` is what `scripts/train.py` and `vlft train` call, in one process or under the
`deepspeed` launcher (the Trainer's DeepSpeed integration drives ZeRO).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from vlft.adapters import apply_adapters, trainable_summary
from vlft.config import RunConfig, config_to_dict
from vlft.models import ModelBundle, get_family
from vlft.train.checkpoints import check_checkpoint_is_safe, discard_partial_checkpoint, latest_complete_checkpoint
from vlft.train.preflight import TINY, check_paths
from vlft.train.report import peak_memory_mb, write_training_report
from vlft.train.trainer import VlftTrainer


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def build_training_arguments(cfg: RunConfig) -> TrainingArguments:
    """Built before the model is loaded: with ZeRO-3 this makes from_pretrained load partitioned."""
    t = cfg.training
    return TrainingArguments(
        output_dir=t.output_dir, seed=t.seed, data_seed=t.seed, num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.lr, weight_decay=t.weight_decay, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm, bf16=t.bf16, logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps > 0 and cfg.data.eval else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None, deepspeed=t.deepspeed, report_to=t.report_to,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.model.gradient_checkpointing else None,
        dataloader_num_workers=cfg.data.num_workers, remove_unused_columns=False, label_names=["labels"],
        use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False, save_only_model=False)


def tiny_base_dir(cfg: RunConfig) -> Path:
    return Path(cfg.training.output_dir).resolve() / "base_model"


@contextmanager
def zero3_init_paused():
    """Construct models as plain modules: ZeRO-3's partitioned construction is for the model we train,
    not for the tiny base checkpoint written to disk before it."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


BUILT_MARKER = ".vlft-tiny-complete"  # written last: a build cut short is redone


def model_path(cfg: RunConfig, args: TrainingArguments | None = None) -> str:
    """The checkpoint named in the config; `tiny` is first built and saved into the run directory."""
    if cfg.model.name_or_path != TINY:
        return cfg.model.name_or_path
    base = tiny_base_dir(cfg)
    first = args.main_process_first(desc="build tiny base model", local=False) if args else nullcontext()
    with first:
        if not (base / BUILT_MARKER).is_file():
            with zero3_init_paused():
                get_family(cfg.model.family).build_tiny_for_run(cfg, base)
            (base / BUILT_MARKER).write_text("")
    return str(base)


def load_model(cfg: RunConfig, path: str) -> ModelBundle:
    family = get_family(cfg.model.family)
    if adapts_conv2d(cfg) and is_deepspeed_zero3_enabled():
        # peft reads a Conv2d kernel's shape when wrapping it, and ZeRO-3's partitioned loading leaves it
        # flat: load whole weights; deepspeed.initialize partitions them afterwards.
        log("ZeRO-3: loading whole weights (adapters on the vision tower's Conv2d), partitioned at initialize")
        with zero3_init_paused():
            return family.load_for_run(cfg, path)
    return family.load_for_run(cfg, path)


def training_data(cfg: RunConfig, path: str):
    """The training records checked and tokenized with the model's tokenizer (once: later launches read them
    from the data cache), before the model's weights are loaded."""
    family = get_family(cfg.model.family)
    train_set = family.train_dataset(cfg, family.load_for_run(cfg, path, with_model=False))
    if train_set.skips is not None:
        log(f"{train_set.path}: {len(train_set)} examples kept; at load, {train_set.skips.summary()}")
    return train_set


def adapts_conv2d(cfg: RunConfig) -> bool:
    """Whether lora/dora reaches a vision tower, whose patch embedding is a Conv2d."""
    return cfg.adapters.vision in ("lora", "dora") or bool(cfg.adapters.target_regex)


def resolve_resume(cfg: RunConfig) -> str | None:
    resume = cfg.training.resume
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        return latest_complete_checkpoint(cfg.training.output_dir)
    return resume


def save_outputs(trainer: VlftTrainer, bundle: ModelBundle, cfg: RunConfig, metrics: dict) -> None:
    """Adapter (peft format, projector included), processor, resolved config and metrics."""
    out = Path(cfg.training.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
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
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def train(cfg: RunConfig) -> TrainResult:
    """Run training (and evaluation) as configured; metrics also go to output_dir/metrics.json."""
    start = time.time()
    check_paths(cfg)
    limit_cpu_threads()
    set_seed(cfg.training.seed)
    args = build_training_arguments(cfg)
    _ = args.device  # sets up torch.distributed now: ZeRO-3's partitioned from_pretrained needs the world size
    if cfg.training.deepspeed:
        import deepspeed

        deepspeed.init_distributed()  # ...and asks deepspeed.comm for it, which must know the process group
    path = model_path(cfg, args)
    train_set = training_data(cfg, path)
    bundle = load_model(cfg, path)
    model = apply_adapters(bundle.model, bundle.towers, cfg.adapters)
    table, params = trainable_summary(model, bundle.towers, cfg.adapters)
    log(f"trainable parameters ({cfg.model.name_or_path}):\n{table}")
    trainer = VlftTrainer(model=model, args=args, train_dataset=train_set, bundle=bundle, run_config=cfg,
                          skips=train_set.skips, data_collator=get_family(cfg.model.family).collator(bundle))
    if is_main_process() and (partial := discard_partial_checkpoint(cfg.training.output_dir)):
        log(f"removed a checkpoint left half-written by a killed run: {partial}")
    resume = resolve_resume(cfg)
    if resume:
        check_checkpoint_is_safe(resume)
        log(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**params, "world_size": args.world_size, "train_loss": result.training_loss,
               "global_step": result.global_step, "train_runtime_s": round(result.metrics["train_runtime"], 2),
               "resumed_from": resume}
    if train_set.skips is not None:
        skips = trainer.gathered_skips()
        metrics["skipped_records"] = skips.counts()
        log(f"training data: {skips.summary()}")
    if cfg.eval.at_end and cfg.data.eval:
        metrics["eval"] = trainer.evaluate()
    metrics["wall_time_s"] = round(time.time() - start, 2)
    metrics.update(peak_memory_mb())
    save_outputs(trainer, bundle, cfg, metrics)
    if trainer.is_world_process_zero():
        write_training_report(trainer.state.log_history, cfg.training.output_dir)
    log(json.dumps(metrics, indent=2))
    return TrainResult(metrics=metrics, model=model, bundle=bundle)
