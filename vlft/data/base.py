"""The dataset every family's datasets build on: records prepared once (vlft.data.cache), read from a
memory-mapped Arrow file, mixed by weight, with bad records raised or counted.

A family dataset says what it stores per record (``features`` and ``columns``, run once at preparation,
where the record's checks belong too) and what one example is (``item``, run in DataLoader workers, where
images and video frames are decoded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vlft.config import VideoConfig
from vlft.data.cache import Prepared, cache_root, prepare, tokenizer_fingerprint
from vlft.data.records import DataError, image_paths, validate_record
from vlft.data.skips import SkipLog
from vlft.data.sources import as_sources
from vlft.data.video import read_frames

TOKENS = datasets.List(datasets.Value("int32"))  # the column type of token ids in a prepared dataset

BASE_FEATURES = {"record": datasets.Value("string"), "where": datasets.Value("string")}


def load_image(image_folder: str | Path, relative_path: str, where: str) -> Image.Image:
    path = Path(image_folder) / relative_path
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {path}", reason="missing_image", where=where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # truncated or not an image
        raise DataError(f"{where}: cannot read image {path}: {err}", reason="corrupt_image", where=where) from None


def image_size(image_folder: str | Path, relative_path: str, where: str) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding it."""
    path = Path(image_folder) / relative_path
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {path}", reason="missing_image", where=where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: cannot read image {path}: {err}", reason="corrupt_image", where=where) from None


def mix_index(sizes: list[int], weights: list[float | None], seed: int) -> np.ndarray | None:
    """Rows of the concatenated sources that make one epoch. Without weights every row once (None: in
    order). With weights an epoch holds sum(sizes) examples, source i's share weight_i / sum(weights):
    drawn without replacement up to its size, whole passes plus a draw past it."""
    if all(w is None for w in weights):
        return None
    rng = np.random.default_rng(seed)
    total, weight_sum = sum(sizes), sum(weights)
    shares = [total * w / weight_sum for w in weights]
    counts = [int(share) for share in shares]  # then the rounding remainder, largest fractions first
    for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[: total - sum(counts)]:
        counts[i] += 1
    offsets = np.cumsum([0, *sizes])
    parts = []
    for offset, size, wanted in zip(offsets[:-1], sizes, counts, strict=True):
        if size == 0 or wanted == 0:
            continue
        passes, rest = divmod(wanted, size)
        draws = [np.arange(size)] * passes + [np.sort(rng.choice(size, rest, replace=False))]
        parts.append(offset + np.concatenate(draws))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class TokenMemo:
    """The tokenizer's ``tokenizer(text, add_special_tokens=False)`` for texts tokenized together beforehand
    (one call per chunk of records instead of one per turn: most of the cost of preparing is the call's
    overhead); a text not prefetched is tokenized on its own."""

    def __init__(self, tokenizer):
        self.tokenizer, self.known = tokenizer, {}

    def prefetch(self, texts: list[str]) -> None:
        texts = list(dict.fromkeys(texts))
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        self.known = dict(zip(texts, ids, strict=True))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        if text in self.known and not add_special_tokens:
            return {"input_ids": list(self.known[text])}
        return self.tokenizer(text, add_special_tokens=add_special_tokens)


class _RecordView(Sequence):
    """The dataset's records as dicts, decoded on access (nothing is held in memory)."""

    def __init__(self, dataset: PreparedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return self.dataset.num_records

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return json.loads(self.dataset.row(index % len(self), "record"))


class PreparedDataset(Dataset):
    """Records of one or more sources (data.train or data.eval), prepared and cached; one example per record
    unless a subclass says otherwise.

    ``on_error="raise"`` stops at the first bad record. With ``"skip"``, records found bad when prepared are
    left out and counted in ``self.skips``; one found bad when read (a corrupt image) comes back as
    ``{"skipped": (reason, where, message)}``, which the collator drops and reports in the batch.
    """

    validate = staticmethod(validate_record)  # the record schema
    max_images: int | None = 1  # images per record the family's model takes (None: any number)
    COLUMNS: dict = {}  # what columns() returns, as datasets features

    def __init__(self, sources, bundle, image_folder: str, max_samples: int | None = None, on_error: str = "raise",
                 video: VideoConfig | None = None, cache_dir: str | None = None, seed: int = 0, log=print):
        self.bundle, self.image_folder, self.video = bundle, image_folder, video or VideoConfig()
        self.tokens = TokenMemo(bundle.tokenizer) if bundle.tokenizer is not None else None
        self.sources = as_sources(sources)
        self.path = ", ".join(s.path for s in self.sources)
        self.skips = SkipLog() if on_error == "skip" else None
        features, parts = datasets.Features({**BASE_FEATURES, **self.COLUMNS}), self.fingerprint_parts()
        prepared: list[Prepared] = [prepare(source, self.encode, features, parts, cache_root(cache_dir), on_error,
                                            log, self.before_encoding) for source in self.sources]
        for part in prepared:
            for reason, where, message in part.skips:
                self.skips.add(reason, where, message)
        self.reused = all(part.reused for part in prepared)
        self.rows = prepared[0].rows if len(prepared) == 1 else datasets.concatenate_datasets(
            [part.rows for part in prepared])
        self.index = mix_index([len(p.rows) for p in prepared], [s.weight for s in self.sources], seed)
        if max_samples is not None and max_samples < self.num_records:
            self.index = (np.arange(len(self.rows)) if self.index is None else self.index)[:max_samples]
        self.records = _RecordView(self)

    # -- what is stored, once per record ------------------------------------------------------------------

    def fingerprint_parts(self) -> dict:
        """Everything the stored columns depend on besides the source itself."""
        return {"dataset": type(self).__name__, "image_folder": str(Path(self.image_folder).resolve()),
                "max_images": self.max_images, "tokenizer": tokenizer_fingerprint(self.bundle.tokenizer),
                "video_frames": [self.video.needed(), self.video.most()]}

    def encode(self, record: dict, where: str) -> dict:
        """The stored row of one record: schema, file and family checks, then the family's columns."""
        self.validate(record, where)
        where = f"{where} (id {record.get('id', '?')})"
        self.check(record, where)
        return {"record": json.dumps(record), "where": where, **self.columns(record, where)}

    def check(self, record: dict, where: str) -> None:
        """Cheap checks of one record before training: its image or video files exist."""
        if record.get("video"):
            path = Path(self.image_folder) / record["video"]
            if not path.is_file():
                raise DataError(f"{where}: video not found: {path}", reason="missing_video", where=where)
        images = image_paths(record)
        if self.max_images is not None and len(images) > self.max_images:
            raise DataError(f"{where}: {len(images)} images in one record; this model family takes at most "
                            f"{self.max_images}", reason="image_count_mismatch", where=where)
        for image in images:
            path = Path(self.image_folder) / image
            if not path.is_file():
                raise DataError(f"{where}: image not found: {path}", reason="missing_image", where=where)

    def columns(self, record: dict, where: str) -> dict:
        return {}

    def texts_to_tokenize(self, record: dict) -> list[str]:
        """The texts columns() tokenizes (through self.tokens), for batching; a record not yet validated."""
        return []

    def before_encoding(self, records: list) -> None:
        """Tokenize the texts of a chunk of records in one call (records not yet validated: a malformed one
        is left to encode(), which names it)."""
        if self.tokens is None:
            return
        texts = []
        for record in records:
            try:
                texts += self.texts_to_tokenize(record)
            except (KeyError, TypeError, AttributeError, IndexError):
                continue
        self.tokens.prefetch(texts)

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def num_records(self) -> int:
        return len(self.rows) if self.index is None else len(self.index)

    def row(self, index: int, column: str | None = None):
        """The stored row of record ``index`` (or one column of it)."""
        position = index if self.index is None else int(self.index[index])
        if column is None:
            return self.rows[position]
        return self.rows.data.column(column)[position].as_py()

    def column(self, name: str) -> np.ndarray:
        """One numeric column for every record, in dataset order (for samplers)."""
        values = self.rows.data.column(name).to_numpy()
        return values if self.index is None else values[self.index]

    def where(self, index: int) -> str:
        return self.row(index, "where")

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        try:
            return self.item(index)
        except DataError as err:
            if self.skips is None or err.reason is None:
                raise
            return {"skipped": (err.reason, err.where or self.where(index), str(err))}

    def item(self, index: int) -> dict:
        raise NotImplementedError

    def frames(self, record: dict, where: str) -> torch.Tensor:
        """(frames, C, H, W): the sampled frames of a video record through the image processor."""
        frames = read_frames(Path(self.image_folder) / record["video"], self.video, where, record.get("start"),
                             record.get("end"))
        return torch.stack([self.bundle.image_processor(f, return_tensors="pt")["pixel_values"][0] for f in frames])

    def image(self, path: str, where: str) -> torch.Tensor:
        """(C, H, W): one image through the image processor."""
        image = load_image(self.image_folder, path, where)
        return self.bundle.image_processor(image, return_tensors="pt")["pixel_values"][0]
