"""The `tiny` model: `model.name_or_path: tiny` builds a small random-init model of the configured family from
`model.tiny`, saves it into the run directory and loads it back through the path a full checkpoint takes.

Training, evaluation and `vlft validate-data` all read the same build, so it lives here, below all three.
"""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from vlft.config import RunConfig
from vlft.models.contract import ModelFamily
from vlft.ranks import is_node_main

TINY = "tiny"
BUILT_MARKER = ".vlft-tiny-complete"  # in every whole build (older builds were cut short without it)


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


def build_tiny_base(cfg: RunConfig, family: ModelFamily, base: Path) -> None:
    """Build under a temporary name, then rename into place: whole or not at all. Nodes that share output_dir
    each build it too (seeded, so the same model); the first rename wins."""
    staging = base.with_name(f"{base.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zero3_init_paused():
            family.build_tiny_for_run(cfg, staging)
        (staging / BUILT_MARKER).write_text("")
        if base.is_dir() and not (base / BUILT_MARKER).is_file():
            shutil.rmtree(base)  # a build an older vlft left cut short in place
        try:
            os.rename(staging, base)
        except OSError:  # built meanwhile by another node
            if not (base / BUILT_MARKER).is_file():
                raise
    finally:  # a failed build leaves nothing behind
        shutil.rmtree(staging, ignore_errors=True)


def model_path(cfg: RunConfig, family: ModelFamily) -> str:
    """The checkpoint named in the config; `tiny` is first built and saved into the run directory by the first
    rank of every node (a node-local output_dir holds its own copy). Called before torch.distributed starts:
    transformers' save_pretrained then writes on global rank 0 only. The node's other ranks must not read it
    before a barrier."""
    if cfg.model.name_or_path != TINY:
        return cfg.model.name_or_path
    base = tiny_base_dir(cfg)
    if is_node_main() and not (base / BUILT_MARKER).is_file():
        build_tiny_base(cfg, family, base)
    return str(base)
