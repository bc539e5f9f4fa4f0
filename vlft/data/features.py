"""Pre-extracted visual features on disk: for training with a frozen vision tower without running it.

A features directory holds safetensors shards (`features-00000.safetensors`, ...) whose tensor names
are the images' paths relative to data.image_folder, each (grid cells, channels); `index.json` maps
every image to its shard, and `meta.json` says which model wrote them. data_prep/extract_clip_features.py
writes one; `data.features` points a run at it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlft.data.records import DataError

INDEX, META = "index.json", "meta.json"


class FeatureStore:
    """Read-only access to a features directory; shards are opened lazily (once per DataLoader worker)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            raise DataError(f"data.features: {index_path} not found: not a features directory written by "
                            "data_prep/extract_clip_features.py", reason=None)
        self.index: dict[str, str] = json.loads(index_path.read_text())
        self.meta: dict = json.loads((self.directory / META).read_text()) if (self.directory / META).is_file() else {}
        self._open: dict[str, object] = {}

    def state(self) -> dict:
        """What identifies the store's content (for the data cache's fingerprint)."""
        stat = (self.directory / INDEX).stat()
        return {"directory": str(self.directory.resolve()), "index": [stat.st_size, stat.st_mtime_ns]}

    def feature_shape(self) -> tuple[int, ...]:
        """(cells, channels) of every stored image."""
        first = next(iter(self.index))
        return tuple(self.get(first, "data.features").shape)

    def __contains__(self, image: str) -> bool:
        return image in self.index

    def get(self, image: str, where: str) -> torch.Tensor:
        if image not in self.index:
            raise DataError(f"{where}: no pre-extracted features for image {image} in {self.directory}",
                            reason="missing_image", where=where)
        shard = self.index[image]
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.directory / shard), framework="pt")
        return self._open[shard].get_tensor(image)

    def __getstate__(self) -> dict:  # DataLoader workers reopen the shards themselves
        return {**self.__dict__, "_open": {}}


def write_features(directory: str | Path, features: Iterable[tuple[str, torch.Tensor]], meta: dict,
                   shard_size: int = 2048) -> int:
    """Write (image, tensor) pairs as shards of ``shard_size`` images; returns how many were written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}

    def flush() -> None:
        name = f"features-{len(set(index.values())):05d}.safetensors"
        save_file(shard, str(directory / name))
        index.update(dict.fromkeys(shard, name))
        shard.clear()

    for image, tensor in features:
        shard[image] = tensor.contiguous()
        if len(shard) == shard_size:
            flush()
    if shard:
        flush()
    (directory / META).write_text(json.dumps({**meta, "images": len(index)}, indent=1))
    (directory / INDEX).write_text(json.dumps(index))  # last: a directory without it is incomplete
    return len(index)
