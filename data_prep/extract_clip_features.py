"""Pre-extract a VL-BART run's CLIP grid features for every image of its data, for training with the
vision tower frozen (data.features) instead of running it in every step.

    python data_prep/extract_clip_features.py configs/vl_bart_dora_tiny.yaml --out data/easy_vqa/clip_features
    deepspeed scripts/train.py configs/vl_bart_dora_tiny.yaml data.features=data/easy_vqa/clip_features \\
        adapters.vision=frozen

The vision tower is the one the run loads: the named open_clip model (model.vision_tower), a saved
vlft VL-BART, or the run's `tiny` base model (built into output_dir/base_model first, as training
would). Images that cannot be read stop the extraction with the file named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vlft.config import load_config  # noqa: E402
from vlft.data.base import load_image  # noqa: E402
from vlft.data.cache import read_encoded  # noqa: E402
from vlft.data.features import write_features  # noqa: E402
from vlft.data.records import image_paths, validate_record  # noqa: E402
from vlft.data.sources import as_sources  # noqa: E402
from vlft.models import get_family  # noqa: E402
from vlft.models.tiny import model_path  # noqa: E402
from vlft.models.vl_bart_modeling import grid_features  # noqa: E402


def images_of(cfg) -> list[str]:
    """Every distinct image the run's train and eval records name, in first-seen order."""
    def images(record: dict, where: str) -> list[str]:
        validate_record(record, where)
        return image_paths(record)

    seen: dict[str, None] = {}
    for source in as_sources(cfg.data.train) + as_sources(cfg.data.eval):
        for _, paths, error in read_encoded(source, images):
            if error is not None:
                raise error
            seen.update(dict.fromkeys(paths))
    return list(seen)


@torch.no_grad()
def extract(cfg, family, images: list[str], batch_size: int, dtype: torch.dtype):
    """(image, features) pairs from the run's vision tower, in batches."""
    bundle = family.load_for_run(cfg, model_path(cfg, family))
    vision = bundle.model.vision.eval()
    for start in tqdm(range(0, len(images), batch_size), desc="extract", unit="batch"):
        names = images[start:start + batch_size]
        pixels = torch.stack([bundle.image_processor(load_image(cfg.data.image_folder, name, f"image {name}"),
                                                     return_tensors="pt")["pixel_values"][0] for name in names])
        cells = grid_features(vision, pixels.to(next(vision.parameters()).dtype))
        yield from zip(names, cells.to(dtype), strict=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the run's YAML config (a family that reads data.features: vl_bart)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--out", required=True, help="features directory to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--shard-size", type=int, default=2048, help="images per safetensors shard")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    family = get_family(cfg.model.family)
    if "features" not in family.DATA_OPTIONS:
        raise SystemExit(f"error: {args.config}: the {cfg.model.family} family does not read pre-extracted features")
    images = images_of(cfg)
    meta = {"model": cfg.model.name_or_path, "vision_tower": cfg.model.vision_tower, "dtype": args.dtype,
            "config": str(args.config)}
    count = write_features(args.out, extract(cfg, family, images, args.batch_size, getattr(torch, args.dtype)), meta,
                           args.shard_size)
    print(json.dumps({"images": count, "out": args.out}))


if __name__ == "__main__":
    main()
