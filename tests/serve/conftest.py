"""Tiny LLaVA, VL-BART and ViT runs, trained once for the serving tests and merged, with their eval sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config_dict

FAMILIES = ("llava", "vl_bart", "vit")
TINY_MODELS = {
    "vl_bart": {"family": "vl_bart", "name_or_path": "tiny",
                "tiny": {"image_size": 32, "vision_hidden_size": 32, "text_hidden_size": 32, "text_layers": 1,
                         "num_heads": 2}},
    "vit": {"family": "vit", "name_or_path": "tiny",
            "tiny": {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 2,
                     "num_heads": 2}},
}


def serving_config(family: str, data: dict, out: Path) -> dict:
    """DoRA on both towers (Conv2d included); LLaVA trains long enough to give different answers."""
    cfg = tiny_config_dict(data, out, max_steps=8 if family == "llava" else 3, lr=1e-2)
    cfg["adapters"]["vision"] = "dora"
    if family in TINY_MODELS:
        cfg["model"] = TINY_MODELS[family]
    if family == "vit":
        cfg["adapters"].update(language="frozen", projector="frozen")
        cfg["data"].update(train=str(data["labels"]), eval=str(data["labels"]))
    return cfg


@pytest.fixture(scope="session")
def served(shapes_data, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{family: {"run", "merged", "eval" (the eval records), "images"}}: each run trained with an evaluation at
    the end (its predictions.json) and merged by `vlft merge`."""
    from vlft.config import config_from_dict
    from vlft.merge import merge_run
    from vlft.train.run import train

    root = tmp_path_factory.mktemp("served")
    records = json.loads(shapes_data["train"].read_text())
    labels = root / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": r["id"], "image": r["image"], "label": r["conversations"][1]["value"]})
                              + "\n" for r in records))
    data = {**shapes_data, "labels": labels}
    out = {}
    for family in FAMILIES:
        run = root / f"{family}_run"
        train(config_from_dict(serving_config(family, data, run)))
        merge_run(run, root / f"{family}_merged")
        out[family] = {"run": run, "merged": root / f"{family}_merged", "images": shapes_data["images"],
                       "eval": labels if family == "vit" else shapes_data["test"]}
    return out
