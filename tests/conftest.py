"""Shared fixtures: a small LLaVA-format dataset of drawn shapes and a tiny-model config."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nobody holds now, for a DeepSpeed launch's rendezvous: a fixed or hashed port can still be
    held by the previous launch's store (TIME_WAIT) and fail the next one at random."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
SHAPES = ("circle", "rectangle")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def draw(shape: str, color: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    box = (6, 6, size - 6, size - 6)
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=COLORS[color])
    return image


def write_shapes_dataset(root: Path, n_images: int = 12) -> dict[str, Path]:
    """Images of coloured shapes and questions about them, as LLaVA records (train: multi-turn)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for i in range(n_images):
        shape, color = SHAPES[i % 2], list(COLORS)[i % 3]
        draw(shape, color).save(root / "images" / f"{i}.png")
        qa = [("what shape is this?", shape), ("what color is the shape?", color)]
        turns = [{"from": "human", "value": "<image>\n" + qa[0][0]}, {"from": "gpt", "value": qa[0][1]},
                 {"from": "human", "value": qa[1][0]}, {"from": "gpt", "value": qa[1][1]}]
        train.append({"id": f"train-{i}", "image": f"{i}.png", "conversations": turns})
        for k, (q, a) in enumerate(qa):
            test.append({"id": f"test-{i}-{k}", "question_id": 2 * i + k, "image": f"{i}.png", "answers": [a],
                         "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]})
    paths = {"train": root / "train.json", "test": root / "test.json", "images": root / "images"}
    paths["train"].write_text(json.dumps(train))
    paths["test"].write_text(json.dumps(test))
    return paths


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> dict[str, Path]:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"))


def tiny_config_dict(data: dict[str, Path], output_dir: Path, **training) -> dict:
    return {
        "model": {"family": "llava", "name_or_path": "tiny",
                  "tiny": {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 1,
                           "text_hidden_size": 32, "text_layers": 1, "num_heads": 2}},
        "adapters": {"language": "dora", "vision": "dora", "projector": "full", "r": 4, "alpha": 8},
        "data": {"train": str(data["train"]), "eval": str(data["test"]), "image_folder": str(data["images"]),
                 "max_length": 128},
        "training": {"output_dir": str(output_dir), "seed": 7, "max_steps": 4, "per_device_batch_size": 4,
                     "lr": 1e-3, "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, **training},
        "eval": {"batch_size": 8, "max_new_tokens": 3},
    }


@pytest.fixture()
def tiny_config(shapes_data, tmp_path) -> dict:
    return tiny_config_dict(shapes_data, tmp_path / "run")
