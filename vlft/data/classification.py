"""Image classification records ``{"id", "image", "label"}`` (JSON list or JSONL) and their batches."""

from __future__ import annotations

from pathlib import Path

import torch

from vlft.data.dataset import _RecordDataset
from vlft.data.records import DataError, read_records
from vlft.data.skips import SkipLog
from vlft.models.base import ModelBundle


def validate_label_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    where = f"{where} (id {record['id']})" if "id" in record else where
    for key in ("image", "label"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise DataError(f"{where}: field '{key}' must be a non-empty string, got {record.get(key)!r}")


def read_label_records(path: str | Path, lenient: bool = False) -> list[tuple[int, dict]]:
    return read_records(path, SkipLog() if lenient else None, validate=validate_label_record)


class LabelledImageDataset(_RecordDataset):
    """pixel_values and the label's index in the model's label list (``bundle.extra["labels"]``)."""

    validate = staticmethod(validate_label_record)

    def __init__(self, path: str | Path, bundle: ModelBundle, image_folder: str, max_samples: int | None = None,
                 on_error: str = "raise"):
        self.label_index = {label: i for i, label in enumerate(bundle.extra["labels"])}
        super().__init__(path, bundle, image_folder, max_samples, on_error)

    def check(self, record: dict, where: str) -> None:
        super().check(record, where)
        if record["label"] not in self.label_index:
            raise DataError(f"{where}: label {record['label']!r} is not one of the model's labels "
                            f"{sorted(self.label_index)}", where=where)

    def item(self, index: int) -> dict:
        item = {"labels": self.label_index[self.records[index]["label"]], "index": index}
        return self.add_pixel_values(item, index)


class ImageLabelCollator:
    """Stacks images and labels; drops (and reports) records skipped under on_error: skip."""

    def __call__(self, items: list[dict]) -> dict:
        skipped = [it["skipped"] for it in items if "skipped" in it]
        items = [it for it in items if "skipped" not in it]
        if not items:
            raise DataError(f"every example of a batch failed to load, e.g. {skipped[0][2]}", reason=None)
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
                 "labels": torch.tensor([it["labels"] for it in items]), "index": [it["index"] for it in items]}
        if skipped:
            batch["skipped"] = skipped
        return batch
