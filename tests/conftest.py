"""Shared fixtures: a small LLaVA-format dataset of drawn shapes and a tiny-model config."""

from __future__ import annotations

import json
import os
import socket
import tempfile
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


def strict_zero3(directory: Path) -> str:
    """The shipped ZeRO-3 config with every parameter partitioned and released right after use (on tiny models the
    shipped thresholds keep every parameter whole), so that every forward gathers parameters from all ranks and
    DoRA's reads of W, A, B and the magnitude outside their own modules' forward are exercised."""
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_max_live_parameters=0,
                                   stage3_max_reuse_distance=0, stage3_prefetch_bucket_size=0)
    path = Path(directory) / "zero3-strict.json"
    path.write_text(json.dumps(ds))
    return str(path)


COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
SHAPES = ("circle", "rectangle")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# prepared data of the tests' temporary files goes to a temporary cache (subprocesses inherit it)
os.environ.setdefault("VLFT_CACHE_DIR", tempfile.mkdtemp(prefix="vlft-test-cache-"))
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


def write_video(path: Path, frames: int, fps: int = 8, size: int = 32) -> Path:
    """Frame t is a flat grey of brightness 10 * t: the order of frames can be read back."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "0"}
        for t in range(frames):
            image = np.full((size, size, 3), 10 * t + 20, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_mixed_dataset(root: Path) -> dict[str, Path]:
    """Text-only, one-image, two-image and video records in an order that, read in file order with 2 ranks
    of 2 examples per step, gives the ranks different kinds of batch in every step:

        step 1: rank 0 two image records      rank 1 two text-only records
        step 2: rank 0 two video records      rank 1 two image records
        step 3: rank 0 two text-only records  rank 1 a video record and a two-image record

    The eval set alternates image and text-only prompts: with 2 ranks, one rank's prompts are all text-only.
    """
    data = write_shapes_dataset(root)
    write_video(data["images"] / "clip.mp4", frames=8)
    answers = {i: (SHAPES[i % 2], list(COLORS)[i % 3]) for i in range(12)}

    def image(i):
        return {"id": f"image-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat shape is this?"}, {"from": "gpt", "value": answers[i][0]}]}

    def text(i):
        return {"id": f"text-{i}", "conversations": [{"from": "human", "value": f"what comes after {i}?"},
                                                     {"from": "gpt", "value": str(i + 1)}]}

    def video(i):
        return {"id": f"video-{i}", "video": "clip.mp4", "conversations": [
            {"from": "human", "value": "<video>\nwhat color is the shape?"}, {"from": "gpt", "value": "gray"}]}

    pair = {"id": "pair", "image": ["0.png", "1.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nare both red?"}, {"from": "gpt", "value": "no"}]}
    train = [image(0), image(1), text(0), text(1), video(0), video(1), image(2), image(3), text(2), text(3),
             video(2), pair]
    evaluation = [record for i in range(3) for record in (image(4 + i), text(4 + i))]
    paths = {**data, "mixed_train": root / "mixed_train.json", "mixed_eval": root / "mixed_eval.json"}
    paths["mixed_train"].write_text(json.dumps(train))
    paths["mixed_eval"].write_text(json.dumps(evaluation))
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
