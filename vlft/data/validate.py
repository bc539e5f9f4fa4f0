"""`vlft validate-data`: read every record and image a config names, report every bad one, train nothing."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from vlft.config import RunConfig
from vlft.data.conversation import encode_conversation
from vlft.data.dataset import ConversationDataset, load_image
from vlft.data.records import DataError, image_paths
from vlft.data.skips import SkipLog
from vlft.models import ModelBundle, get_family
from vlft.train.preflight import TINY, check_paths


def data_bundle(cfg: RunConfig, workdir: str) -> ModelBundle:
    """Tokenizer and image-token layout of the configured model, without its weights."""
    family = get_family(cfg.model.family)
    lenient = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_error="skip"))
    if cfg.model.name_or_path != TINY:
        return family.load_for_run(lenient, cfg.model.name_or_path, with_model=False)
    from vlft.train.run import BUILT_MARKER, tiny_base_dir

    base = tiny_base_dir(cfg)
    if not (base / BUILT_MARKER).is_file():  # not trained yet: build the same tiny model aside
        base = family.build_tiny_for_run(lenient, Path(workdir) / "tiny")
    return family.load_for_run(lenient, str(base), with_model=False)


def _check_records(dataset, encode: bool) -> None:
    """What loading finds only when it reads a record: unreadable images, text that cuts the image."""
    image_errors: dict[str, str | None] = {}  # image path -> error, each image decoded once
    for index, record in enumerate(dataset.records):
        where = dataset._where(dataset.positions[index], record)  # by record (seq2seq sets count questions)
        try:
            for image in image_paths(record) if getattr(dataset, "features", None) is None else []:
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
        family = get_family(cfg.model.family)
        report["train"] = family.train_dataset(cfg, bundle, on_error="skip")
        if cfg.data.eval:
            report["eval"] = family.eval_dataset(cfg, bundle, on_error="skip")
        for dataset in report.values():
            _check_records(dataset, encode=isinstance(dataset, ConversationDataset))
    return {split: dataset.skips for split, dataset in report.items()}
