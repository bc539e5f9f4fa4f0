"""Bad records under ``data.on_error: skip``: which were dropped and why, counted by reason."""

from __future__ import annotations

import torch.distributed as dist

from vlft.ranks import distributed

REASONS = ("malformed_record", "image_count_mismatch", "missing_image", "corrupt_image", "too_long",
           "missing_video", "corrupt_video", "empty_video", "too_short_video")


class SkipLog:
    """Distinct skipped records per reason; a record met again (a later epoch) is not counted twice."""

    def __init__(self):
        self.records: dict[str, dict[str, str]] = {}  # reason -> {where: message}

    def add(self, reason: str, where: str, message: str) -> None:
        self.records.setdefault(reason, {}).setdefault(where, message)

    def extend(self, entries: list[tuple[str, str, str]]) -> None:
        for reason, where, message in entries:
            self.add(reason, where, message)

    def counts(self) -> dict[str, int]:
        return {reason: len(self.records[reason]) for reason in REASONS if self.records.get(reason)}

    def total(self) -> int:
        return sum(self.counts().values())

    def gathered(self) -> SkipLog:
        """The union over the ranks of a distributed run (each rank skips in its own shard)."""
        if not distributed():
            return self
        parts: list[dict] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.records)
        union = SkipLog()
        for part in parts:
            for reason, entries in part.items():
                for where, message in entries.items():
                    union.add(reason, where, message)
        return union

    def summary(self, what: str = "skipped") -> str:
        counts = self.counts()
        if not counts:
            return f"no records {what}"
        return f"{self.total()} record(s) {what}: " + ", ".join(f"{r} {n}" for r, n in counts.items())
