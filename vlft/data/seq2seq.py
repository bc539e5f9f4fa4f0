"""Image-text tasks for encoder-decoder models (VL-BART): one example per question of a conversation record.

Source: ``<s> <task prefix> <question> </s>`` (the `<image>` placeholders removed: images enter as
features), the prefix set by the record's ``task`` as in VL-T5's multitask training; target:
``<answer> </s>``. Evaluation examples are each record's last question, with its references.
A record may hold several images (NLVR2's pair); a batch pads them to its largest count. A record
without an image or video (text-only) gets one blank image that its attention mask hides: the vision tower
runs for every batch, as it must on every rank of a distributed run.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import torch

from vlft.config import VideoConfig
from vlft.data.base import TOKENS, PreparedDataset
from vlft.data.collate import pad, split_skipped, with_bookkeeping
from vlft.data.conversation import IGNORE_INDEX
from vlft.data.features import FeatureStore
from vlft.data.records import IMAGE_PLACEHOLDER, ROLES, VIDEO_PLACEHOLDER, DataError, image_paths, references
from vlft.models.base import ModelBundle

TASK_PREFIX = {"vqa": "vqa: ", "gqa": "gqa: ", "nlvr2": "nlvr: ", "caption": "caption: ", "video_qa": "vqa: ",
               "video_mc": "vqa: ", "video_caption": "caption: "}


def question_text(turn: dict) -> str:
    """A user turn's text without its image/video placeholders (the encoder gets the visual tokens)."""
    return turn["value"].replace(IMAGE_PLACEHOLDER, " ").replace(VIDEO_PLACEHOLDER, " ").strip()


def question_answer_pairs(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    return [(question_text(turns[i]), turns[i + 1]["value"])
            for i in range(len(turns) - 1)
            if ROLES[turns[i]["from"]] == "user" and ROLES[turns[i + 1]["from"]] == "assistant"]


class QuestionAnswerDataset(PreparedDataset):
    """Every (question, answer) pair for training; with ``for_eval`` each record's last question."""

    COLUMNS = {"sources": datasets.List(TOKENS), "targets": datasets.List(TOKENS),
               "num_pairs": datasets.Value("int32")}

    def __init__(self, sources, bundle: ModelBundle, image_folder: str, max_length: int,
                 max_samples: int | None = None, on_error: str = "raise", for_eval: bool = False,
                 features: FeatureStore | None = None, video: VideoConfig | None = None,
                 group_by_record: bool = False, **kwargs):
        self.store = features  # pre-extracted visual features instead of images
        self.max_images = bundle.extra["max_images"]  # the model's image-position embeddings
        self.max_length, self.for_eval, self.grouped = max_length, for_eval, group_by_record and not for_eval
        super().__init__(sources, bundle, image_folder, max_samples, on_error, video, **kwargs)
        self.examples = self._examples()

    def _examples(self) -> np.ndarray:
        """(examples, 3): record index, first pair, number of pairs. A grouped record is one example of all its
        pairs (one visual input for all of them); a record without pairs gives none."""
        counts = self.column("num_pairs").astype(np.int64)
        if self.grouped:
            records = np.flatnonzero(counts)
            return np.stack([records, np.zeros_like(records), counts[records]], axis=1)
        records = np.repeat(np.arange(len(counts)), counts)
        firsts = np.arange(len(records)) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([records, firsts, np.ones_like(records)], axis=1)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "max_length": self.max_length, "for_eval": self.for_eval,
                "features": self.store.state() if self.store is not None else None}

    def check(self, record: dict, where: str) -> None:
        if record.get("video") and self.store is not None:
            raise DataError(f"{where}: data.features holds image features; a video record needs its frames "
                            "(drop data.features)", where=where)
        if self.store is None:
            return super().check(record, where)
        if len(image_paths(record)) > self.max_images:
            raise DataError(f"{where}: {len(image_paths(record))} images in one record; VL-BART takes at most "
                            f"{self.max_images}", reason="image_count_mismatch", where=where)
        for image in image_paths(record):
            if image not in self.store:
                raise DataError(f"{where}: no pre-extracted features for image {image} in "
                                f"{self.store.directory}", reason="missing_image", where=where)

    def pairs(self, record: dict) -> list[tuple[str, str]]:
        """(question, answer) of each example of the record; for evaluation its last question."""
        pairs = question_answer_pairs(record)
        if self.for_eval:
            pairs = [(question_text(record["conversations"][-2 if pairs else -1]), "")]
        return pairs

    def texts_to_tokenize(self, record: dict) -> list[str]:
        prefix = TASK_PREFIX.get(record.get("task", "vqa"), "")
        return [text for question, answer in self.pairs(record) for text in (prefix + question, answer)]

    def columns(self, record: dict, where: str) -> dict:
        """Token ids of each question (with its task prefix) and answer."""
        tok, pairs = self.bundle.tokenizer, self.pairs(record)
        prefix = TASK_PREFIX[record.get("task", "vqa")]
        sources = [[tok.bos_token_id, *self._ids(prefix + question)][: self.max_length - 1] + [tok.eos_token_id]
                   for question, _ in pairs]
        targets = [[*self._ids(answer), tok.eos_token_id] for _, answer in pairs]
        return {"sources": sources, "targets": targets, "num_pairs": len(pairs)}

    def _ids(self, text: str) -> list[int]:
        return self.tokens(text, add_special_tokens=False)["input_ids"]

    def __len__(self) -> int:
        return len(self.examples)

    def where(self, index: int) -> str:
        return self.row(int(self.examples[index][0]), "where")

    def item(self, index: int) -> dict:
        """input_ids (and labels) of the example's question, or lists of them for a grouped record."""
        record_index, first, count = (int(v) for v in self.examples[index])
        row = self.row(record_index)
        record, chosen = json.loads(row["record"]), slice(first, first + count)
        item = {"input_ids": [torch.tensor(ids) for ids in row["sources"][chosen]]}
        if self.for_eval:
            item.update(index=record_index, references=references(record))
        else:
            item["labels"] = [torch.tensor(ids) for ids in row["targets"][chosen]]
        if not self.grouped:
            item = {key: value[0] if isinstance(value, list) else value for key, value in item.items()}
        return {**item, **self.visual_inputs(record, row["where"])}

    def visual_inputs(self, record: dict, where: str) -> dict[str, torch.Tensor]:
        """pixel_values (images, C, H, W) of one record, or its visual_features (images, cells, channels); a
        text-only record's one blank input is masked out by its image_mask."""
        if record.get("video"):
            return {"pixel_values": self.frames(record, where)}  # frames as images; the model pools them
        key, paths = ("visual_features" if self.store is not None else "pixel_values"), image_paths(record)
        if not paths:
            return {key: torch.zeros(1, *self.blank_shape()), "image_mask": torch.zeros(1, dtype=torch.long)}
        if self.store is not None:
            return {key: torch.stack([self.store.get(path, where) for path in paths])}
        return {key: torch.stack([self.image(path, where) for path in paths])}

    def blank_shape(self) -> tuple[int, ...]:
        if self.store is not None:
            return self.store.feature_shape()
        size = self.bundle.image_processor.image["size"]
        return (3, size, size)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _pad_images(stacks: list[torch.Tensor], masks: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, most images, ...) pixel values or features, and the (B, most images) mask of real ones."""
    most = max(len(s) for s in stacks)
    pixels = stacks[0].new_zeros((len(stacks), most, *stacks[0].shape[1:]))
    mask = torch.zeros(len(stacks), most, dtype=torch.long)
    for row, (stack, own) in enumerate(zip(stacks, masks, strict=True)):
        pixels[row, : len(stack)] = stack
        mask[row, : len(stack)] = 1 if own is None else own
    return pixels, mask


class Seq2SeqCollator:
    """Right-pads sources, targets and image lists (masks cover the padding); drops skipped records."""

    def __init__(self, pad_token_id: int, for_generation: bool = False):
        self.pad_token_id, self.for_generation = pad_token_id, for_generation

    def __call__(self, items: list[dict]) -> dict:
        items, skipped = split_skipped(items)
        # a grouped record brings several questions (rows) that share its one visual input
        rows = [(n, ids) for n, it in enumerate(items) for ids in _as_list(it["input_ids"])]
        batch = {"input_ids": pad([ids for _, ids in rows], self.pad_token_id),
                 "attention_mask": pad([torch.ones_like(ids) for _, ids in rows], 0)}
        visual = "visual_features" if "visual_features" in items[0] else "pixel_values"
        batch[visual], batch["image_mask"] = _pad_images([it[visual] for it in items],
                                                         [it.get("image_mask") for it in items])
        if len(rows) > len(items):
            batch["visual_index"] = torch.tensor([n for n, _ in rows])
        if "labels" in items[0]:
            batch["labels"] = pad([label for it in items for label in _as_list(it["labels"])], IGNORE_INDEX)
        return with_bookkeeping(batch, items, skipped, self.for_generation)
