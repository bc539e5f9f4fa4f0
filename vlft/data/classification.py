"""Image classification records ``{"id", "image", "label"}`` and their batches."""

from __future__ import annotations

import json

import datasets
import torch

from vlft.data.base import PreparedDataset
from vlft.data.cache import read_encoded
from vlft.data.collate import split_skipped
from vlft.data.records import DataError
from vlft.data.sources import as_sources
from vlft.models.base import ModelBundle


def validate_label_record(record, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    where = f"{where} (id {record['id']})" if "id" in record else where
    for key in ("image", "label"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise DataError(f"{where}: field '{key}' must be a non-empty string, got {record.get(key)!r}")


def label_set(sources) -> list[str]:
    """Sorted distinct labels of the good records (bad ones are left to the dataset's checks)."""
    def label(record: dict, where: str) -> str:
        validate_label_record(record, where)
        return record["label"]

    return sorted({value for source in as_sources(sources) for _, value, error in read_encoded(source, label)
                   if error is None})


class LabelledImageDataset(PreparedDataset):
    """pixel_values and the label's index in the model's label list (``bundle.extra["labels"]``)."""

    validate = staticmethod(validate_label_record)
    COLUMNS = {"label_index": datasets.Value("int32")}

    def __init__(self, sources, bundle: ModelBundle, image_folder: str, max_samples: int | None = None,
                 on_error: str = "raise", **kwargs):
        self.label_index = {label: i for i, label in enumerate(bundle.extra["labels"])}
        super().__init__(sources, bundle, image_folder, max_samples, on_error, **kwargs)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "labels": list(self.label_index)}

    def columns(self, record: dict, where: str) -> dict:
        if record["label"] not in self.label_index:
            raise DataError(f"{where}: label {record['label']!r} is not one of the model's labels "
                            f"{sorted(self.label_index)}", where=where)
        return {"label_index": self.label_index[record["label"]]}

    def item(self, index: int) -> dict:
        row = self.row(index)
        image = json.loads(row["record"])["image"]
        return {"labels": row["label_index"], "index": index, "pixel_values": self.image(image, row["where"])}


class ImageLabelCollator:
    """Stacks images and labels; drops (and reports) records skipped under on_error: skip."""

    def __call__(self, items: list[dict]) -> dict:
        items, skipped = split_skipped(items)
        batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
                 "labels": torch.tensor([it["labels"] for it in items]), "index": [it["index"] for it in items]}
        if skipped:
            batch["skipped"] = skipped
        return batch
