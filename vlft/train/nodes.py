"""A run over several nodes: which node a rank is on, whether output_dir is one directory every node sees or a
disk per node, and the checkpoint every node resumes from (which node a rank is on: vlft.ranks). The functions
that gather are collectives: every rank calls them (in one process they only look at the local disk).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import torch.distributed as dist

from vlft.ranks import distributed, is_node_main, node_rank
from vlft.train.checkpoints import complete_checkpoint_steps
from vlft.train.errors import NodesDisagree

PROBE = ".vlft-shared-probe-"  # + a fresh token: no node can have seen that name before


def gather_from_nodes(value) -> dict:
    """{node rank: value} from the first rank of every node, on every rank (collective)."""
    if not distributed():
        return {node_rank(): value}
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (node_rank(), value) if is_node_main() else None)
    return dict(part for part in parts if part is not None)


def node_log(message: str, nodes: int) -> None:
    """Print on the first rank of every node, naming the node when there are several."""
    if is_node_main():
        print(f"node {node_rank()}: {message}" if nodes > 1 else message, flush=True)


def output_dir_is_shared(output_dir: str | Path) -> bool:
    """Whether every node sees the same output_dir (collective): the first rank writes a file of a fresh name
    there, and the first rank of every node looks for it. Raises when some nodes see it and others do not."""
    if not distributed():
        return True
    token = [uuid.uuid4().hex if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    probe = Path(output_dir) / f"{PROBE}{token[0]}"
    if dist.get_rank() == 0:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
    dist.barrier()
    seen = gather_from_nodes(probe.is_file())
    dist.barrier()
    if dist.get_rank() == 0:
        probe.unlink()
    if all(seen.values()):
        return True
    if sum(seen.values()) == 1:  # only the first node's own disk has it
        return False
    sharing = [n for n, s in sorted(seen.items()) if s]
    apart = [n for n, s in sorted(seen.items()) if not s]
    raise NodesDisagree(f"training.output_dir {output_dir}: nodes {sharing} share one directory and nodes {apart} "
                        "do not; give every node its own disk or all of them one shared directory")


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The step a checkpoint directory holds: N of checkpoint-N, else its trainer_state.json's (whose checks are
    the Trainer's: None when it cannot be read)."""
    if checkpoint is None:
        return None
    match = re.search(r"checkpoint-(\d+)$", str(checkpoint).rstrip("/"))
    if match:
        return int(match.group(1))
    try:
        return json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None


def resume_disagreement(chosen: dict[int, int | None], held: dict[int, list[int]], output_dir: str) -> str | None:
    """Why the nodes cannot resume, or None when they all resume from the same step (or all start afresh).

    ``chosen``: node -> step it would resume from; ``held``: node -> steps of its complete checkpoints."""
    if len(set(chosen.values())) <= 1:
        return None
    each = ", ".join(f"node {n}: {f'checkpoint-{s}' if s is not None else 'none'}" for n, s in sorted(chosen.items()))
    common = set.intersection(*(set(steps) for steps in held.values()))
    fix = (f"set training.resume={Path(output_dir) / f'checkpoint-{max(common)}'} on every node (the newest step "
           "all of them hold)" if common else "no step is held by every node: start afresh with another "
           "training.output_dir")
    return f"the nodes would resume from different steps ({each}); every node must resume from the same step: {fix}"


def check_same_resume_step(resume: str | None, output_dir: str) -> None:
    """Stop on every rank, naming each node's step, unless all nodes resume from the same step (collective)."""
    found = gather_from_nodes((checkpoint_step(resume), complete_checkpoint_steps(output_dir)))
    message = resume_disagreement({n: step for n, (step, _) in found.items()},
                                  {n: held for n, (_, held) in found.items()}, output_dir)
    if message:
        raise NodesDisagree(message)
