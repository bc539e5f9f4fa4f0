"""LLaVA's datasets over conversation records, and the collator that batches them.

Records are tokenized once, when prepared, with one marker token per image or video (the stored row stays
small and does not depend on how many frames a video gives); each marker becomes the model's run of image
tokens when an example is read.
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import torch

from vlft.data.base import PreparedDataset
from vlft.data.conversation import (
    IGNORE_INDEX,
    TokenSpec,
    encode_conversation,
    encode_prompt,
    texts_to_tokenize,
    truncate,
)
from vlft.data.records import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, DataError, image_paths, question_turns, references
from vlft.models.base import ModelBundle

TOKENS = datasets.List(datasets.Value("int32"))


def token_spec(bundle: ModelBundle) -> TokenSpec:
    tok = bundle.tokenizer
    return TokenSpec(image_token_id=bundle.image_token_id, num_image_tokens=bundle.num_image_tokens,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def with_markers(turns: list[dict]) -> list[dict]:
    """A video's `<video>` placeholder as one `<image>` marker (its frames are counted when it is read)."""
    return [{**t, "value": t["value"].replace(VIDEO_PLACEHOLDER, IMAGE_PLACEHOLDER)} for t in turns]


def expand_markers(ids: list[int], marker: int, per_marker: int, *aligned: list[int]) -> list[np.ndarray]:
    """Each marker token of ``ids`` repeated ``per_marker`` times (the image tokens an image or video
    occupies), and the same positions repeated in each ``aligned`` sequence (labels)."""
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.where(ids == marker, per_marker, 1)
    return [np.repeat(np.asarray(seq, dtype=np.int64), counts) for seq in (ids, *aligned)]


class _ConversationRecords(PreparedDataset):
    """What the LLaVA datasets share: the token layout and how a record's visual input is read."""

    max_images = None  # transformers' LLaVA fills image-token runs in order: any number per record

    def __init__(self, sources, bundle: ModelBundle, image_folder: str, **kwargs):
        self.spec = token_spec(bundle)
        # markers: every image or video is one image token until it is read
        self.marker_spec = dataclasses.replace(self.spec, num_image_tokens=1)
        super().__init__(sources, bundle, image_folder, **kwargs)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "template": dataclasses.asdict(self.bundle.template),
                "spec": dataclasses.asdict(self.spec)}

    def tokens_per_marker(self, record: dict, frames: int | None = None) -> int:
        """Image tokens one marker stands for: an image's, or those of a video's frames (by default as many as
        sampling can give)."""
        if record.get("video"):
            return (frames or self.video.most()) * self.spec.num_image_tokens
        return self.spec.num_image_tokens

    def visual_inputs(self, record: dict, where: str) -> dict:
        """pixel_values (images, C, H, W): the record's images, or its video's frames, in token order."""
        if record.get("video"):
            return {"pixel_values": self.frames(record, where)}
        if image_paths(record):
            return {"pixel_values": torch.stack([self.image(path, where) for path in image_paths(record)])}
        return {}

    def expanded(self, record: dict, item: dict, ids: list[int], *aligned: list[int]) -> list[np.ndarray]:
        frames = len(item["pixel_values"]) if record.get("video") else None
        return expand_markers(ids, self.spec.image_token_id, self.tokens_per_marker(record, frames), *aligned)


class ConversationDataset(_ConversationRecords):
    """Training examples: input_ids, labels (answers only) and pixel_values."""

    COLUMNS = {"input_ids": TOKENS, "labels": TOKENS, "length": datasets.Value("int32"),
                "multimodal": datasets.Value("bool")}

    def __init__(self, sources, bundle: ModelBundle, image_folder: str, max_length: int, **kwargs):
        self.max_length = max_length
        super().__init__(sources, bundle, image_folder, **kwargs)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "max_length": self.max_length}

    def texts_to_tokenize(self, record: dict) -> list[str]:
        return texts_to_tokenize(with_markers(record["conversations"]), self.bundle.template)

    def columns(self, record: dict, where: str) -> dict:
        ids, labels = encode_conversation(with_markers(record["conversations"]), self.tokens, self.bundle.template,
                                          self.marker_spec, 10**9, where)
        markers = [i for i, t in enumerate(ids) if t == self.spec.image_token_id]
        extra = self.tokens_per_marker(record) - 1
        if markers:  # where the last image token ends once every marker is expanded
            end = markers[-1] + 1 + len(markers) * extra
            if end > self.max_length:
                raise DataError(f"{where}: its image tokens end at position {end}, beyond data.max_length="
                                f"{self.max_length}, before any of its text; raise max_length", reason="too_long",
                                where=where)
        length = min(len(ids) + len(markers) * extra, self.max_length)
        return {"input_ids": ids, "labels": labels, "length": length, "multimodal": bool(markers)}

    def modality_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Each example's length (image tokens included) and whether it has an image or video."""
        return self.column("length"), self.column("multimodal")

    def item(self, index: int) -> dict:
        row = self.row(index)
        record, where = json.loads(row["record"]), row["where"]
        item = self.visual_inputs(record, where)
        input_ids, labels = self.expanded(record, item, row["input_ids"], row["labels"])
        input_ids, labels = truncate(input_ids.tolist(), labels.tolist(), self.spec, self.max_length, where)
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), **item}


class PromptDataset(_ConversationRecords):
    """Evaluation prompts: the conversation without its final answer, plus the references."""

    COLUMNS = {"input_ids": TOKENS}

    def texts_to_tokenize(self, record: dict) -> list[str]:
        return texts_to_tokenize(with_markers(question_turns(record)), self.bundle.template)

    def columns(self, record: dict, where: str) -> dict:
        return {"input_ids": encode_prompt(with_markers(question_turns(record)), self.tokens, self.bundle.template,
                                           self.marker_spec)}

    def item(self, index: int) -> dict:
        row = self.row(index)
        record = json.loads(row["record"])
        item = {"index": index, "references": references(record), **self.visual_inputs(record, row["where"])}
        (input_ids,) = self.expanded(record, item, row["input_ids"])
        return {"input_ids": torch.from_numpy(input_ids), **item}


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


class VisionTextCollator:
    """Pads a batch: right padding for training, left padding for generation.

    pixel_values stacks the images (or video frames) of the examples that have them, in batch order, which
    is the order in which the model fills the image-token slots; a text-only batch has none (the model
    then runs its vision tower on a blank image so that every rank does the same work: see
    vlft.models.llava.keep_vision_in_step).
    """

    def __init__(self, pad_token_id: int, for_generation: bool = False):
        self.pad_token_id = pad_token_id
        self.for_generation = for_generation

    def __call__(self, items: list[dict]) -> dict:
        items, skipped = split_skipped(items)
        left = self.for_generation
        input_ids = pad([it["input_ids"] for it in items], self.pad_token_id, left)
        attention = pad([torch.ones_like(it["input_ids"]) for it in items], 0, left)
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if "labels" in items[0]:
            batch["labels"] = pad([it["labels"] for it in items], IGNORE_INDEX, left)
        images = [it["pixel_values"] for it in items if "pixel_values" in it]
        if images:
            batch["pixel_values"] = torch.cat(images)
        if self.for_generation:
            batch["index"] = [it["index"] for it in items]
            batch["references"] = [it["references"] for it in items]
        if skipped:
            batch["skipped"] = skipped
        return batch
