"""A fourth model family in one file, as the README's layout section walks through: the hooks of
vlft.models.contract.ModelFamily and ClassifiesImages around a two-Linear classifier of 4-value inputs.
tests/models/test_contract.py registers it under the name `toy`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from vlft.models.base import ModelBundle

TOWERS = {"vision": ("encoder",), "head": ("head",)}
MODEL_FILES = ("toy.json",)
DATA_OPTIONS: frozenset[str] = frozenset()
LABELS = ["no", "yes"]


class ToyClassifier(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, width), nn.ReLU())  # a tower: the Linear layers inside it
        self.head = nn.Linear(width, len(LABELS))

    def forward(self, pixel_values, labels=None):
        logits = self.head(self.encoder(pixel_values))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class ToyRecords(Dataset):
    """Every example the same input: enough to exercise the hooks, nothing to learn."""

    def __init__(self, count: int):
        self.records, self.path, self.skips = [{"label": "yes"}] * count, "<toy>", None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": torch.ones(4), "labels": torch.tensor(1)}


def load(model_cfg, path: str, with_model: bool = True) -> ModelBundle:
    width = json.loads((Path(path) / "toy.json").read_text())["width"]
    model = None
    if with_model:
        model = ToyClassifier(width)
        model.load_state_dict(torch.load(Path(path) / "model.pt", weights_only=True))
    return ModelBundle(model=model, tokenizer=None, image_processor=None, towers=TOWERS, base_path=path)


def build_tiny_for_run(cfg, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.model.tiny.seed)
    width = cfg.model.tiny.vision_hidden_size
    torch.save(ToyClassifier(width).state_dict(), out_dir / "model.pt")
    (out_dir / "toy.json").write_text(json.dumps({"width": width}))
    return out_dir


def load_for_run(cfg, path: str, with_model: bool = True) -> ModelBundle:
    return load(cfg.model, path, with_model)


def train_dataset(cfg, bundle: ModelBundle, on_error: str | None = None):
    return ToyRecords(8)


def eval_dataset(cfg, bundle: ModelBundle, on_error: str | None = None):
    return ToyRecords(cfg.eval.max_samples or 4)


def collator(bundle: ModelBundle):
    return default_collate


def label_names(bundle: ModelBundle) -> list[str]:
    return LABELS


def export_merged(model, bundle: ModelBundle, out_dir: str | Path) -> None:
    torch.save(model.state_dict(), Path(out_dir) / "model.pt")
    (Path(out_dir) / "toy.json").write_text(json.dumps({"width": model.head.in_features}))
