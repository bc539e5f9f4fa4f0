"""Image-text tasks for encoder-decoder models (VL-BART): one example per question of a conversation record.

Source: ``<s> <task prefix> <question> </s>`` (the `<image>` placeholders removed: images enter as
features), the prefix set by the record's ``task`` as in VL-T5's multitask training; target:
``<answer> </s>``. Evaluation examples are each record's last question, with its references.
A record may hold several images (NLVR2's pair); a batch pads them to its largest count.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlft.config import VideoConfig
from vlft.data.conversation import IGNORE_INDEX
from vlft.data.dataset import _RecordDataset
from vlft.data.features import FeatureStore
from vlft.data.records import IMAGE_PLACEHOLDER, ROLES, VIDEO_PLACEHOLDER, DataError, image_paths, references
from vlft.models.base import ModelBundle
from vlft.models.vl_bart_modeling import MAX_IMAGES

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


class QuestionAnswerDataset(_RecordDataset):
    """Every (question, answer) pair for training; with ``for_eval`` each record's last question."""

    max_images = MAX_IMAGES

    def __init__(self, path: str | Path | list, bundle: ModelBundle, image_folder: str, max_length: int,
                 max_samples: int | None = None, on_error: str = "raise", for_eval: bool = False,
                 features: FeatureStore | None = None, video: VideoConfig | None = None,
                 group_by_record: bool = False):
        self.features = features  # pre-extracted visual features instead of images
        super().__init__(path, bundle, image_folder, max_samples, on_error, video)
        self.max_length, self.for_eval, self.grouped = max_length, for_eval, group_by_record and not for_eval
        self.examples = []  # (record index, [(question, answer), ...]): the questions of one example
        for index, record in enumerate(self.records):
            pairs = question_answer_pairs(record)
            if for_eval:
                self.examples.append((index, [(question_text(record["conversations"][-2 if pairs else -1]), None)]))
            elif self.grouped and pairs:  # one visual input for all of a record's questions
                self.examples.append((index, pairs))
            else:
                self.examples += [(index, [pair]) for pair in pairs]

    def check(self, record: dict, where: str) -> None:
        if not record.get("image") and not record.get("video"):
            raise DataError(f"{where}: VL-BART needs an image or a video per record (field 'image' or 'video')",
                            where=where)
        if record.get("video") and self.features is not None:
            raise DataError(f"{where}: data.features holds image features; a video record needs its frames "
                            "(drop data.features)", where=where)
        if self.features is None:
            return super().check(record, where)
        if len(image_paths(record)) > self.max_images:
            raise DataError(f"{where}: {len(image_paths(record))} images in one record; VL-BART takes at most "
                            f"{self.max_images}", reason="image_count_mismatch", where=where)
        for image in image_paths(record):
            if image not in self.features:
                raise DataError(f"{where}: no pre-extracted features for image {image} in "
                                f"{self.features.directory}", reason="missing_image", where=where)

    def __len__(self) -> int:
        return len(self.examples)

    def where(self, index: int) -> str:
        record_index = self.examples[index][0]
        return self._where(self.positions[record_index], self.records[record_index])

    def _ids(self, text: str) -> list[int]:
        return self.bundle.tokenizer(text, add_special_tokens=False)["input_ids"]

    def item(self, index: int) -> dict:
        """input_ids (and labels) of the example's question, or lists of them for a grouped record."""
        record_index, pairs = self.examples[index]
        record, tok = self.records[record_index], self.bundle.tokenizer
        prefix = TASK_PREFIX[record.get("task", "vqa")]
        sources = [[tok.bos_token_id, *self._ids(prefix + question)][: self.max_length - 1] for question, _ in pairs]
        item = {"input_ids": [torch.tensor([*source, tok.eos_token_id]) for source in sources]}
        if self.for_eval:
            item.update(index=record_index, references=references(record))
        else:
            item["labels"] = [torch.tensor([*self._ids(answer), tok.eos_token_id]) for _, answer in pairs]
        if not self.grouped:
            item = {key: value[0] if isinstance(value, list) else value for key, value in item.items()}
        return {**item, **self.visual_inputs(record_index)}

    def visual_inputs(self, record_index: int) -> dict[str, torch.Tensor]:
        """pixel_values (images, C, H, W) of one record, or its visual_features (images, cells, channels)."""
        from vlft.data.dataset import load_image

        record = self.records[record_index]
        where = self._where(self.positions[record_index], record)
        if self.features is not None:
            return {"visual_features": torch.stack([self.features.get(path, where) for path in image_paths(record)])}
        if record.get("video"):
            return {"pixel_values": self.frames(record_index)}  # frames as images; the model pools them
        return {"pixel_values": torch.stack([self.bundle.image_processor(load_image(self.image_folder, path, where),
                                                        return_tensors="pt")["pixel_values"][0]
                            for path in image_paths(record)])}


def _pad(sequences: list[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=sequences[0].dtype)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _pad_images(stacks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, most images, ...) pixel values or features, and the (B, most images) mask of real ones."""
    most = max(len(s) for s in stacks)
    pixels = stacks[0].new_zeros((len(stacks), most, *stacks[0].shape[1:]))
    mask = torch.zeros(len(stacks), most, dtype=torch.long)
    for row, stack in enumerate(stacks):
        pixels[row, : len(stack)], mask[row, : len(stack)] = stack, 1
    return pixels, mask


class Seq2SeqCollator:
    """Right-pads sources, targets and image lists (masks cover the padding); drops skipped records."""

    def __init__(self, pad_token_id: int, for_generation: bool = False):
        self.pad_token_id, self.for_generation = pad_token_id, for_generation

    def __call__(self, items: list[dict]) -> dict:
        skipped = [it["skipped"] for it in items if "skipped" in it]
        items = [it for it in items if "skipped" not in it]
        if not items:
            raise DataError(f"every example of a batch failed to load, e.g. {skipped[0][2]}", reason=None)
        # a grouped record brings several questions (rows) that share its one visual input
        rows = [(n, ids) for n, it in enumerate(items) for ids in _as_list(it["input_ids"])]
        batch = {"input_ids": _pad([ids for _, ids in rows], self.pad_token_id),
                 "attention_mask": _pad([torch.ones_like(ids) for _, ids in rows], 0)}
        visual = "visual_features" if "visual_features" in items[0] else "pixel_values"
        batch[visual], batch["image_mask"] = _pad_images([it[visual] for it in items])
        if len(rows) > len(items):
            batch["visual_index"] = torch.tensor([n for n, _ in rows])
        if "labels" in items[0]:
            batch["labels"] = _pad([label for it in items for label in _as_list(it["labels"])], IGNORE_INDEX)
        if self.for_generation:
            batch["index"] = [it["index"] for it in items]
            batch["references"] = [it["references"] for it in items]
        if skipped:
            batch["skipped"] = skipped
        return batch
