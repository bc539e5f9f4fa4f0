"""LLaVA's datasets over conversation records, and the collator that batches them.

Records are tokenized once, when prepared, with one marker token per image or video (the stored row stays
small and does not depend on how many frames a video gives); each marker becomes the model's run of image
tokens when an example is read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import numpy as np
import torch

from vlft.data.base import TOKENS, PreparedDataset, image_size, load_image
from vlft.data.collate import pad, split_skipped, with_bookkeeping
from vlft.data.conversation import IGNORE_INDEX, TokenSpec, truncate
from vlft.data.records import DataError, image_paths, question_turns, references
from vlft.data.video import read_frames
from vlft.models.base import ConversationBundle


def token_spec(bundle: ConversationBundle) -> TokenSpec:
    """The token layout of a prepared row: one marker token per image (the image token) or video (the video
    token where the checkpoint's template writes one)."""
    tok, visual = bundle.tokenizer, bundle.extra["visual"]
    video = visual.video_token_id if getattr(bundle.template, "native_video", False) else None
    return TokenSpec(image_token_id=visual.image_token_id, num_image_tokens=1, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, video_token_id=video)


def expand_markers(ids: list[int], spec: TokenSpec, counts: list[int], *aligned: list[int]) -> list[np.ndarray]:
    """The k-th marker token of ``ids`` repeated ``counts[k]`` times (the tokens of the k-th image or video),
    and the same positions repeated in each ``aligned`` sequence (labels)."""
    ids = np.asarray(ids, dtype=np.int64)
    markers = np.isin(ids, spec.visual_token_ids)
    if markers.sum() != len(counts):
        raise ValueError(f"{int(markers.sum())} image or video markers for {len(counts)} visual inputs")
    repeats = np.ones(len(ids), dtype=np.int64)
    repeats[markers] = counts
    return [np.repeat(np.asarray(seq, dtype=np.int64), repeats) for seq in (ids, *aligned)]


class _ConversationRecords(PreparedDataset):
    """What the LLaVA datasets share: the template, the token layout and how a record's visual inputs are read
    (through the checkpoint's processor: model inputs and the tokens each image or clip occupies)."""

    max_images = None  # transformers' LLaVA fills image-token runs in order: any number per record

    def __init__(self, sources, bundle: ConversationBundle, image_folder: str, system_prompt: str = "", **kwargs):
        self.template = bundle.template.with_system(system_prompt)
        self.visual = bundle.extra["visual"]
        self.spec = token_spec(bundle)
        super().__init__(sources, bundle, image_folder, **kwargs)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "template": self.template.describe(),
                "spec": dataclasses.asdict(self.spec)}

    def marker_counts(self, record: dict, where: str) -> list[int]:
        """Tokens of each image (at its size on disk) or of the video (as many frames as sampling can give):
        what the record occupies at most, known before any image is decoded."""
        side = self.visual.config.vision_config.image_size
        if record.get("video"):
            return [self.visual.video_tokens(self.video.most(), side, side, as_images=not self.spec.video_token_id)]
        if not self.visual.size_dependent:  # every image is resized to the tower's input
            return [self.visual.image_tokens(side, side)] * len(image_paths(record))
        return [self.visual.image_tokens(*image_size(self.image_folder, path, where)) for path in image_paths(record)]

    def visual_inputs(self, record: dict, where: str) -> tuple[dict[str, list[torch.Tensor]], list[int]]:
        """(model inputs: per key, one tensor per image or the video's; the tokens each occupies), in token
        order."""
        if record.get("video"):
            frames = read_frames(Path(self.image_folder) / record["video"], self.video, where, record.get("start"),
                                 record.get("end"))
            inputs, count = self.visual.video(frames, as_images=not self.spec.video_token_id)
            return {key: [value] for key, value in inputs.items()}, [count]
        parts = [self.visual.image(load_image(self.image_folder, path, where)) for path in image_paths(record)]
        if not parts:
            return {}, []
        return {key: [p[0][key] for p in parts] for key in parts[0][0]}, [count for _, count in parts]


class ConversationDataset(_ConversationRecords):
    """Training examples: input_ids, labels (answers only) and the model's visual inputs."""

    COLUMNS = {"input_ids": TOKENS, "labels": TOKENS, "length": datasets.Value("int32"),
               "multimodal": datasets.Value("bool")}

    def __init__(self, sources, bundle: ConversationBundle, image_folder: str, max_length: int, **kwargs):
        self.max_length = max_length
        super().__init__(sources, bundle, image_folder, **kwargs)

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "max_length": self.max_length}

    def texts_to_tokenize(self, record: dict) -> list[str]:
        return self.template.texts_to_tokenize(record["conversations"])

    def columns(self, record: dict, where: str) -> dict:
        ids, labels = self.template.encode(record["conversations"], self.tokens, self.spec, 10**9, where)
        markers = [i for i, t in enumerate(ids) if t in self.spec.visual_token_ids]
        counts = self.marker_counts(record, where) if markers else []
        if markers:  # where the last image token ends once every marker is expanded
            end = markers[-1] + 1 + sum(counts) - len(counts)
            if end > self.max_length:
                raise DataError(f"{where}: its image tokens end at position {end}, beyond data.max_length="
                                f"{self.max_length}, before any of its text; raise max_length", reason="too_long",
                                where=where)
        length = min(len(ids) + sum(counts) - len(counts), self.max_length)
        return {"input_ids": ids, "labels": labels, "length": length, "multimodal": bool(markers)}

    def modality_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Each example's length (image tokens included) and whether it has an image or video."""
        return self.column("length"), self.column("multimodal")

    def item(self, index: int) -> dict:
        row = self.row(index)
        record, where = json.loads(row["record"]), row["where"]
        inputs, counts = self.visual_inputs(record, where)
        input_ids, labels = expand_markers(row["input_ids"], self.spec, counts, row["labels"])
        input_ids, labels = truncate(input_ids.tolist(), labels.tolist(), self.spec, self.max_length, where)
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "visual": inputs}


class PromptDataset(_ConversationRecords):
    """Evaluation prompts: the conversation without its final answer, plus the references."""

    COLUMNS = {"input_ids": TOKENS}

    def texts_to_tokenize(self, record: dict) -> list[str]:
        return self.template.texts_to_tokenize(question_turns(record))

    def columns(self, record: dict, where: str) -> dict:
        return {"input_ids": self.template.prompt(question_turns(record), self.tokens, self.spec)}

    def item(self, index: int) -> dict:
        row = self.row(index)
        record = json.loads(row["record"])
        inputs, counts = self.visual_inputs(record, row["where"])
        (input_ids,) = expand_markers(row["input_ids"], self.spec, counts)
        return {"input_ids": torch.from_numpy(input_ids), "visual": inputs, "index": index,
                "references": references(record)}


def stack_visual(per_item: list[dict]) -> dict[str, torch.Tensor]:
    """The visual inputs of a batch, in token order: each key's tensors concatenated over the examples;
    any-resolution pixel_values (images, tiles, C, H, W) padded to the most tiles (the model reads each image's
    own count from image_sizes)."""
    batch: dict[str, list[torch.Tensor]] = {}
    for inputs in per_item:
        for key, tensors in inputs.items():
            batch.setdefault(key, []).extend(tensors)
    out = {}
    for key, tensors in batch.items():
        if tensors[0].dim() == 5 and len({t.shape[1] for t in tensors}) > 1:
            most = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 0, 0, most - t.shape[1])) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


class VisionTextCollator:
    """Pads a batch: right padding for training, left padding for generation.

    The visual inputs (pixel_values, image_sizes, pixel_values_videos) are those of the examples that have
    them, in batch order, which is the order in which the model fills the image- and video-token slots; a
    text-only batch has none (the model then runs its vision tower on a blank image so that every rank does the
    same work: see vlft.models.llava_steps).
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
        batch.update(stack_visual([it["visual"] for it in items if it.get("visual")]))
        return with_bookkeeping(batch, items, skipped, self.for_generation)
