"""What every family's collator does: pad token sequences, set aside the examples that failed to load."""

from __future__ import annotations

import torch

from vlft.data.records import DataError


def pad(sequences: list[torch.Tensor], value: int, left: bool = False) -> torch.Tensor:
    """(B, longest): sequences padded with ``value`` on the right (on the left for generation)."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=sequences[0].dtype)
    for row, seq in enumerate(sequences):
        if left:
            out[row, width - len(seq):] = seq
        else:
            out[row, :len(seq)] = seq
    return out


def split_skipped(items: list[dict]) -> tuple[list[dict], list[tuple]]:
    """(examples that loaded, skipped ones) of a batch; raises when nothing in it could be read."""
    skipped = [it["skipped"] for it in items if "skipped" in it]
    items = [it for it in items if "skipped" not in it]
    if not items:
        raise DataError(f"every example of a batch failed to load, e.g. {skipped[0][2]}", reason=None)
    return items, skipped


def with_bookkeeping(batch: dict, items: list[dict], skipped: list[tuple], for_generation: bool) -> dict:
    """The batch with what travels beside the model's inputs: for generation each example's dataset index and
    references (to score the answers), and the examples set aside (counted by the trainer)."""
    if for_generation:
        batch["index"] = [it["index"] for it in items]
        batch["references"] = [it["references"] for it in items]
    if skipped:
        batch["skipped"] = skipped
    return batch
