"""The evaluation shards: every example once over the ranks, and the same number of batches on every rank however
the examples split (under ZeRO-3 a rank with a batch fewer would leave the others waiting for ever)."""

import math

import pytest
import torch

from vlft.eval.shard import PADDING, _Shard, map_sharded, shard_indices


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("examples", [0, 1, 2, 5, 7, 8, 9])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_every_example_once_and_the_same_batches_on_every_rank(examples, world, batch_size):
    shards = [shard_indices(examples, rank, world) for rank in range(world)]
    own = sorted(i for indices, count in shards for i in indices[:count])
    assert own == list(range(examples))
    lengths = {len(indices) for indices, _ in shards}
    assert len(lengths) == 1  # so the same number of batches, of the same sizes, on every rank
    per_rank = math.ceil(examples / world)
    assert lengths == {per_rank}
    assert all(0 <= i < max(examples, 1) for indices, _ in shards for i in indices)


class Numbers(torch.utils.data.Dataset):
    skips = None

    def __len__(self):
        return 5

    def __getitem__(self, index):
        return {"index": index, "x": torch.tensor(float(index))}


def collate(items):
    return {"index": [it["index"] for it in items], "x": torch.stack([it["x"] for it in items])}


def test_repeats_are_marked_and_their_results_dropped():
    indices, own = shard_indices(5, 1, 3)  # rank 1 of 3: example 1 and 4 of its own, none repeated
    assert (indices, own) == ([1, 4], 2)
    indices, own = shard_indices(5, 2, 3)  # rank 2 of 3: example 2 and a repeat of it
    assert (indices, own) == ([2, 2], 1)
    shard = _Shard(Numbers(), indices, own)
    assert [shard[i]["index"] for i in range(len(shard))] == [2, PADDING]


def test_one_process_maps_every_example_in_dataset_order():
    results = map_sharded(Numbers(), 2, collate, lambda batch: (batch["x"] * 10).tolist(), desc="test")
    assert results == {i: 10.0 * i for i in range(5)}
