"""Where this process stands in a distributed run: its rank, its node's first rank, whether there are others.

The launcher's environment answers before torch.distributed starts (RANK, LOCAL_RANK); the process group answers
after. Launchers name a rank's node differently (torchrun: GROUP_RANK, the deepspeed launcher: CROSS_RANK);
LOCAL_RANK 0 is a node's first rank under all of them.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def distributed() -> bool:
    """A process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """(rank, world size) of the run; (0, 1) in one process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Global rank 0, by the launcher's environment (usable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Ranks on this node: torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def is_node_main() -> bool:
    """The first rank of its node: the one that writes what the node keeps (data cache, tiny base model, and with a
    disk per node, checkpoints and outputs)."""
    return local_rank() == 0


def node_rank() -> int:
    for key in ("GROUP_RANK", "CROSS_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return int(os.environ.get("RANK", "0")) // local_world_size()


def log_main(message: str) -> None:
    """Print once per run, on global rank 0."""
    if is_main_process():
        print(message, flush=True)
