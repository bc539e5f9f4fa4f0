"""`vlft validate-data`: read every record, image and video a config names, report every bad one, train nothing."""

from __future__ import annotations

import dataclasses
import tempfile
from functools import partial
from pathlib import Path

from vlft.config import RunConfig
from vlft.data.base import load_image
from vlft.data.records import DataError, image_paths
from vlft.data.skips import SkipLog
from vlft.data.video import read_frames
from vlft.models import ModelBundle, get_family
from vlft.models.contract import ModelFamily
from vlft.models.tiny import BUILT_MARKER, TINY, tiny_base_dir
from vlft.train.preflight import check_paths


def data_bundle(cfg: RunConfig, family: ModelFamily, workdir: str) -> ModelBundle:
    """Tokenizer and image-token layout of the configured model, without its weights."""
    lenient = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_error="skip"))
    if cfg.model.name_or_path != TINY:
        return family.load_for_run(lenient, cfg.model.name_or_path, with_model=False)
    base = tiny_base_dir(cfg)
    if not (base / BUILT_MARKER).is_file():  # not trained yet: build the same tiny model aside
        base = family.build_tiny_for_run(lenient, Path(workdir) / "tiny")
    return family.load_for_run(lenient, str(base), with_model=False)


def _first_error(cache: dict, key: tuple, read) -> str | None:
    """(message, reason) of the error of reading ``key`` (an image or a video segment) once, remembered."""
    if key not in cache:
        try:
            read()
            cache[key] = None
        except DataError as err:
            cache[key] = (str(err).split(": ", 1)[1], err.reason)
    return cache[key]


def _check_files(dataset, video) -> None:
    """What only reading finds: images that do not decode; videos that are corrupt, empty or too short."""
    seen: dict[tuple, tuple[str, str] | None] = {}
    uses_files = getattr(dataset, "store", None) is None  # pre-extracted features replace the images
    for index in range(dataset.num_records):
        record, where = dataset.records[index], dataset.row(index, "where")
        checks = [((image,), partial(load_image, dataset.image_folder, image, where))
                  for image in (image_paths(record) if uses_files else [])]
        if record.get("video"):
            segment = (record.get("start"), record.get("end"))
            path = Path(dataset.image_folder) / record["video"]
            checks.append(((record["video"], *segment), partial(read_frames, path, video, where, *segment)))
        for key, read in checks:
            error = _first_error(seen, key, read)
            if error:
                dataset.skips.add(error[1], where, f"{where}: {error[0]}")
                break


def validate_data(cfg: RunConfig) -> dict[str, SkipLog]:
    """Bad records of data.train and data.eval, by split."""
    family = get_family(cfg.model.family)
    check_paths(cfg, family)
    report = {}
    with tempfile.TemporaryDirectory() as workdir:
        bundle = data_bundle(cfg, family, workdir)
        report["train"] = family.train_dataset(cfg, bundle, on_error="skip")
        if cfg.data.eval:
            report["eval"] = family.eval_dataset(cfg, bundle, on_error="skip")
        for dataset in report.values():
            _check_files(dataset, cfg.data.video)
    return {split: dataset.skips for split, dataset in report.items()}
