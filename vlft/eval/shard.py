"""An evaluation set spread over the ranks of a distributed run, its results gathered on every rank.

Every rank runs the same number of batches of the same sizes: its strided share of the examples, padded with
repeats of one of them whose results are dropped. Under ZeRO-3 every forward gathers parameters from all ranks, so
a rank that ran out of examples early would leave the others waiting in their next forward for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vlft.ranks import world

PADDING = -1  # the index a repeated example carries: its result is dropped


def shard_indices(num_examples: int, rank: int, world_size: int) -> tuple[list[int], int]:
    """(the dataset indices rank evaluates, how many of them are its own): every rank gets ceil(n / world) of them,
    the last ones repeats of its last example (of example 0 when the rank has none of its own)."""
    own = list(range(rank, num_examples, world_size))
    per_rank = -(-num_examples // world_size)
    filler = own[-1] if own else 0
    return own + [filler] * (per_rank - len(own)), len(own)


class _Shard(Dataset):
    """The examples of one rank; a repeat comes back with index PADDING."""

    def __init__(self, dataset, indices: list[int], own: int):
        self.dataset, self.indices, self.own = dataset, indices, own

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        item = self.dataset[self.indices[position]]
        if position >= self.own and "index" in item:
            item = {**item, "index": PADDING}
        return item


@contextmanager
def evaluating(model) -> Iterator[None]:
    """The model in eval mode (no dropout), put back as it was after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def map_sharded(dataset, batch_size: int, collate_fn, forward: Callable[[dict], list], desc: str) -> dict[int, object]:
    """{dataset index: result} for every example that loaded, on every rank.

    ``forward(batch)`` gives one result per example of ``batch["index"]``, in order. The dataset's items carry
    their ``index``; with ``on_error: skip`` (``dataset.skips`` set) a batch's ``skipped`` records are counted and
    the counts gathered over the ranks into ``dataset.skips``."""
    rank, world_size = world()
    indices, own = shard_indices(len(dataset), rank, world_size)
    loader = DataLoader(_Shard(dataset, indices, own), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    results: dict[int, object] = {}
    for batch in tqdm(loader, desc=desc, disable=rank != 0):
        skipped = batch.pop("skipped", [])
        if dataset.skips is not None:
            dataset.skips.extend(skipped)
        for index, result in zip(batch["index"], forward(batch), strict=True):
            if index != PADDING:
                results[index] = result
    if world_size > 1:
        parts: list = [None] * world_size
        dist.all_gather_object(parts, results)
        results = {index: result for part in parts for index, result in part.items()}
        if dataset.skips is not None:
            dataset.skips = dataset.skips.gathered()
    return results
