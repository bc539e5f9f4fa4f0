"""Datasets over conversation records and the collator that batches them for LLaVA-style models."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vlft.config import VideoConfig
from vlft.data.conversation import IGNORE_INDEX, TokenSpec, encode_conversation, encode_prompt, image_tokens_end
from vlft.data.records import (
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    DataError,
    data_files,
    image_paths,
    question_turns,
    read_records,
    references,
    validate_record,
)
from vlft.data.skips import SkipLog
from vlft.data.video import read_frames
from vlft.models.base import ModelBundle


def token_spec(bundle: ModelBundle) -> TokenSpec:
    tok = bundle.tokenizer
    return TokenSpec(image_token_id=bundle.image_token_id, num_image_tokens=bundle.num_image_tokens,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def load_image(image_folder: str | Path, relative_path: str, where: str) -> Image.Image:
    path = Path(image_folder) / relative_path
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}: image not found: {path}", reason="missing_image", where=where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # truncated or not an image
        raise DataError(f"{where}: cannot read image {path}: {err}", reason="corrupt_image", where=where) from None


class _RecordDataset(Dataset):
    """Good records of one file. Schema, image files and lengths are checked up front; images are
    decoded lazily (in DataLoader workers).

    ``on_error="raise"`` stops at the first bad record. With ``"skip"``, records found bad up front are
    left out and counted in ``self.skips``; one found bad when read (a corrupt image) comes back as
    ``{"skipped": (reason, where, message)}``, which the collator drops and reports in the batch.
    """

    validate = staticmethod(validate_record)  # the record schema
    max_images = 1  # images per record the family's model takes

    def __init__(self, path: str | Path | list, bundle: ModelBundle, image_folder: str,
                 max_samples: int | None = None, on_error: str = "raise", video: VideoConfig | None = None):
        self.video = video or VideoConfig()  # how frames are taken from video records
        self.paths = data_files(path)  # several files are mixed, in order (multitask training)
        self.path, self.bundle, self.image_folder = ", ".join(self.paths), bundle, image_folder
        self.spec = token_spec(bundle) if bundle.tokenizer is not None else None
        self.skips = SkipLog() if on_error == "skip" else None
        entries = [((file, pos), rec) for file in self.paths
                   for pos, rec in read_records(file, self.skips, validate=self.validate)]
        entries = [(pos, rec) for pos, rec in entries if self._passes_checks(pos, rec)]
        entries = entries[:max_samples] if max_samples else entries
        self.positions = [pos for pos, _ in entries]  # (file, record position in it)
        self.records = [rec for _, rec in entries]

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        return self._where(self.positions[index], self.records[index])

    def _where(self, position: tuple[str, int], record: dict) -> str:
        file, number = position
        label = "line" if file.endswith(".jsonl") else "record"
        return f"{file} {label} {number} (id {record.get('id', '?')})"

    def _passes_checks(self, position: int, record: dict) -> bool:
        try:
            self.check(record, self._where(position, record))
        except DataError as err:
            if self.skips is None:
                raise
            self.skips.add(err.reason, err.where or self._where(position, record), str(err))
            return False
        return True

    def check(self, record: dict, where: str) -> None:
        """Cheap checks of one record before training: its image or video files exist."""
        if record.get("video"):
            path = Path(self.image_folder) / record["video"]
            if not path.is_file():
                raise DataError(f"{where}: video not found: {path}", reason="missing_video", where=where)
        images = image_paths(record)
        if len(images) > self.max_images:
            raise DataError(f"{where}: {len(images)} images in one record; this model family takes at most "
                            f"{self.max_images}", reason="image_count_mismatch", where=where)
        for image in images:
            path = Path(self.image_folder) / image
            if not path.is_file():
                raise DataError(f"{where}: image not found: {path}", reason="missing_image", where=where)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.item(index)
        except DataError as err:
            if self.skips is None or err.reason is None:
                raise
            return {"skipped": (err.reason, err.where or self.where(index), str(err))}

    def frames(self, index: int) -> torch.Tensor:
        """(frames, C, H, W): the sampled frames of a video record through the image processor."""
        record = self.records[index]  # a record index (a QA dataset has several examples per record)
        frames = read_frames(Path(self.image_folder) / record["video"], self.video,
                             self._where(self.positions[index], record), record.get("start"), record.get("end"))
        return torch.stack([self.bundle.image_processor(f, return_tensors="pt")["pixel_values"][0] for f in frames])

    def add_pixel_values(self, item: dict, index: int) -> dict:
        record = self.records[index]
        if record.get("video"):
            item["pixel_values"] = self.frames(index)  # frames go through the image tower like images
        elif record.get("image"):
            image = load_image(self.image_folder, record["image"], self.where(index))
            item["pixel_values"] = self.bundle.image_processor(image, return_tensors="pt")["pixel_values"][0]
        return item


def with_frames(turns: list[dict], frames: int) -> list[dict]:
    """A video's `<video>` placeholder as one `<image>` per frame (frames go through the image tower)."""
    return [{**t, "value": t["value"].replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER * frames)} for t in turns]


def turns_for(record: dict, turns: list[dict], item: dict) -> list[dict]:
    """The turns to encode: a video record's placeholder expanded to the frames actually read."""
    return with_frames(turns, len(item["pixel_values"])) if record.get("video") else turns


class ConversationDataset(_RecordDataset):
    """Training examples: input_ids, labels (answers only) and pixel_values."""

    def __init__(self, path: str | Path, bundle: ModelBundle, image_folder: str, max_length: int,
                 on_error: str = "raise", video: VideoConfig | None = None):
        self.max_length = max_length
        super().__init__(path, bundle, image_folder, on_error=on_error, video=video)

    def check(self, record: dict, where: str) -> None:
        super().check(record, where)
        turns = with_frames(record["conversations"], self.video.most())
        end = image_tokens_end(turns, self.bundle.tokenizer, self.bundle.template, self.spec)
        if end > self.max_length:
            raise DataError(f"{where}: its image tokens end at position {end}, beyond data.max_length="
                            f"{self.max_length}, before any of its text; raise max_length", reason="too_long",
                            where=where)

    def item(self, index: int) -> dict:
        item = self.add_pixel_values({}, index)
        turns = turns_for(self.records[index], self.records[index]["conversations"], item)
        input_ids, labels = encode_conversation(turns, self.bundle.tokenizer, self.bundle.template, self.spec,
                                                self.max_length, self.where(index))
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), **item}


class PromptDataset(_RecordDataset):
    """Evaluation prompts: the conversation without its final answer, plus the references."""

    def item(self, index: int) -> dict:
        record = self.records[index]
        item = self.add_pixel_values({"index": index, "references": references(record)}, index)
        turns = turns_for(record, question_turns(record), item)
        ids = encode_prompt(turns, self.bundle.tokenizer, self.bundle.template, self.spec)
        return {"input_ids": torch.tensor(ids), **item}


def _pad(sequences: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=sequences[0].dtype)
    for row, seq in enumerate(sequences):
        if left:
            out[row, width - len(seq):] = seq
        else:
            out[row, :len(seq)] = seq
    return out


class VisionTextCollator:
    """Pads a batch: right padding for training, left padding for generation.

    pixel_values stacks only the examples that have an image, in batch order, which is the
    order in which the model fills the image-token slots; text-only batches have none.
    """

    def __init__(self, pad_token_id: int, for_generation: bool = False):
        self.pad_token_id = pad_token_id
        self.for_generation = for_generation

    def __call__(self, items: list[dict]) -> dict:
        skipped = [it["skipped"] for it in items if "skipped" in it]
        items = [it for it in items if "skipped" not in it]
        if not items:
            raise DataError(f"every example of a batch failed to load, e.g. {skipped[0][2]}", reason=None)
        left = self.for_generation
        input_ids = _pad([it["input_ids"] for it in items], self.pad_token_id, left)
        attention = _pad([torch.ones_like(it["input_ids"]) for it in items], 0, left)
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if "labels" in items[0]:
            batch["labels"] = _pad([it["labels"] for it in items], IGNORE_INDEX, left)
        # one (C, H, W) image, or a video's (frames, C, H, W), per example: all in the order of their tokens
        images = [it["pixel_values"] for it in items if "pixel_values" in it]
        if images:
            batch["pixel_values"] = torch.cat([p if p.dim() == 4 else p[None] for p in images])
        if self.for_generation:
            batch["index"] = [it["index"] for it in items]
            batch["references"] = [it["references"] for it in items]
        if skipped:
            batch["skipped"] = skipped
        return batch
