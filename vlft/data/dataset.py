"""Datasets over conversation records and the collator that batches them for LLaVA-style models."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vlft.data.conversation import IGNORE_INDEX, TokenSpec, encode_conversation, encode_prompt
from vlft.data.records import DataError, question_turns, read_records, references
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
        raise DataError(f"{where}: image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{where}: cannot read image {path}: {err}") from None


class _RecordDataset(Dataset):
    """Records of one file, read and checked up front; images are read lazily (in DataLoader workers)."""

    def __init__(self, path: str | Path, bundle: ModelBundle, image_folder: str, max_samples: int | None = None):
        self.path = str(path)
        self.records = read_records(path)[:max_samples] if max_samples else read_records(path)
        self.bundle = bundle
        self.spec = token_spec(bundle)
        self.image_folder = image_folder

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        return f"{self.path} record {index} (id {self.records[index].get('id', '?')})"

    def add_pixel_values(self, item: dict, index: int) -> dict:
        record = self.records[index]
        if record.get("image"):
            image = load_image(self.image_folder, record["image"], self.where(index))
            item["pixel_values"] = self.bundle.image_processor(image, return_tensors="pt")["pixel_values"][0]
        return item


class ConversationDataset(_RecordDataset):
    """Training examples: input_ids, labels (answers only) and pixel_values."""

    def __init__(self, path: str | Path, bundle: ModelBundle, image_folder: str, max_length: int):
        super().__init__(path, bundle, image_folder)
        self.max_length = max_length

    def __getitem__(self, index: int) -> dict:
        input_ids, labels = encode_conversation(self.records[index]["conversations"], self.bundle.tokenizer,
                                                self.bundle.template, self.spec, self.max_length, self.where(index))
        return self.add_pixel_values({"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}, index)


class PromptDataset(_RecordDataset):
    """Evaluation prompts: the conversation without its final answer, plus the references."""

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        ids = encode_prompt(question_turns(record), self.bundle.tokenizer, self.bundle.template, self.spec)
        item = {"input_ids": torch.tensor(ids), "index": index, "references": references(record)}
        return self.add_pixel_values(item, index)


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
        left = self.for_generation
        input_ids = _pad([it["input_ids"] for it in items], self.pad_token_id, left)
        attention = _pad([torch.ones_like(it["input_ids"]) for it in items], 0, left)
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if "labels" in items[0]:
            batch["labels"] = _pad([it["labels"] for it in items], IGNORE_INDEX, left)
        images = [it["pixel_values"] for it in items if "pixel_values" in it]
        if images:
            batch["pixel_values"] = torch.stack(images)
        if self.for_generation:
            batch["index"] = [it["index"] for it in items]
            batch["references"] = [it["references"] for it in items]
        return batch
