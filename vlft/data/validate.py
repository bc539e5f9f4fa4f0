"""`vlft validate-data`: read every record and image a config names, report every bad one, train nothing."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from vlft.config import RunConfig
from vlft.data.conversation import encode_conversation
from vlft.data.dataset import ConversationDataset, PromptDataset, load_image
from vlft.data.records import DataError
from vlft.data.skips import SkipLog
from vlft.models import ModelBundle, get_family
from vlft.train.preflight import TINY, check_paths


def data_bundle(cfg: RunConfig, workdir: str) -> ModelBundle:
    """Tokenizer and image-token layout of the configured model, without its weights."""
    family = get_family(cfg.model.family)
    if cfg.model.name_or_path != TINY:
        return family.load(cfg.model, cfg.model.name_or_path, with_model=False)
    from vlft.train.run import tiny_base_dir, training_texts

    base = tiny_base_dir(cfg)
    if not (base / "config.json").is_file():  # not trained yet: build the same tiny model aside
        lenient = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_error="skip"))
        base = family.build_tiny(cfg.model.tiny, training_texts(lenient), Path(workdir) / "tiny")
    return family.load(cfg.model, str(base), with_model=False)


def _check_records(dataset, encode: bool) -> None:
    """What loading finds only when it reads a record: unreadable images, text that cuts the image."""
    image_errors: dict[str, str | None] = {}  # image path -> error, each image decoded once
    for index, record in enumerate(dataset.records):
        where = dataset.where(index)
        try:
            image = record.get("image")
            if image:
                if image not in image_errors:
                    try:
                        load_image(dataset.image_folder, image, where)
                        image_errors[image] = None
                    except DataError as err:
                        image_errors[image] = str(err).split(": ", 1)[1]
                if image_errors[image]:
                    raise DataError(f"{where}: {image_errors[image]}", reason="corrupt_image", where=where)
            if encode:
                encode_conversation(record["conversations"], dataset.bundle.tokenizer, dataset.bundle.template,
                                    dataset.spec, dataset.max_length, where)
        except DataError as err:
            dataset.skips.add(err.reason, err.where or where, str(err))


def validate_data(cfg: RunConfig) -> dict[str, SkipLog]:
    """Bad records of data.train and data.eval, by split."""
    check_paths(cfg)
    report = {}
    with tempfile.TemporaryDirectory() as workdir:
        bundle = data_bundle(cfg, workdir)
        splits = {"train": cfg.data.train, "eval": cfg.data.eval}
        for split, path in splits.items():
            if path is None:
                continue
            if split == "train":
                dataset = ConversationDataset(path, bundle, cfg.data.image_folder, cfg.data.max_length, "skip")
            else:
                dataset = PromptDataset(path, bundle, cfg.data.image_folder, on_error="skip")
            _check_records(dataset, encode=split == "train")
            report[split] = dataset.skips
    return report
