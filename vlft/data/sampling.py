"""LLaVA's modality- and length-grouped order of training examples (`data.group_by_modality_length`)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


def modality_length_grouped_order(lengths: np.ndarray, multimodal: np.ndarray, group: int,
                                  rng: np.random.Generator) -> list[int]:
    """Example indices in groups of ``group`` (one optimizer step over every rank) that are all multimodal
    or all text-only, each group longest first (so each rank's batch holds similar lengths), the groups in
    random order; the two modalities' leftovers form the last group."""
    groups, leftovers = [], []
    for members in (np.flatnonzero(multimodal), np.flatnonzero(~multimodal)):
        members = rng.permutation(members)
        full = len(members) // group * group
        for start in range(0, full, group):
            chunk = members[start:start + group]
            groups.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
        leftovers.append(members[full:])
    order = [int(i) for g in rng.permutation(len(groups)) for i in groups[g]]
    rest = np.concatenate(leftovers)
    return order + [int(i) for i in rest[np.argsort(-lengths[rest], kind="stable")]]


class ModalityLengthGroupedSampler(Sampler[int]):
    """A new grouped order every epoch, the same on every rank (seeded by seed + epoch)."""

    def __init__(self, lengths: np.ndarray, multimodal: np.ndarray, group: int, seed: int):
        self.lengths, self.multimodal, self.group, self.seed = lengths, multimodal.astype(bool), group, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        return iter(modality_length_grouped_order(self.lengths, self.multimodal, self.group, rng))
