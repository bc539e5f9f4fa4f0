"""Prepared data: every record of a source validated and encoded once, kept as an Arrow file.

The file is written by the main process of each node while the other ranks wait, under a directory named
by a fingerprint of everything the stored rows depend on (the source's size and modification time, the
tokenizer, the template, data.max_length, the vlft version, ...). Every rank and DataLoader worker then
memory-maps it: the rows are shared pages of one file, not a Python list per process. A later launch with
the same fingerprint reuses the directory and says so; a change to any part makes a new one.

A directory holds `data.arrow` (a `record` column with the record as JSON, its `where` for messages, and the
dataset's encoded columns), `skips.json` (bad records, in file order: [reason, where, message]) and
`meta.json`, written last: a directory without it is incomplete and is built again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch.distributed as dist
from datasets.arrow_writer import ArrowWriter

from vlft.data.records import DataError
from vlft.data.sources import Source, iter_raw, parse_line, source_state
from vlft.ranks import distributed, is_node_main, log_main

FORMAT_VERSION = 1  # of the stored rows; bump when their layout or meaning changes
META, SKIPS, ROWS = "meta.json", "skips.json", "data.arrow"


def cache_root(configured: str | None) -> Path:
    return Path(configured or os.environ.get("VLFT_CACHE_DIR") or Path.home() / ".cache" / "vlft" / "data")


def fingerprint(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what tokenization depends on: the vocabulary and rules, special tokens, chat template."""
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map,
                        getattr(tokenizer, "chat_template", None)], sort_keys=True, default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()[:20]


def dataset_options(cfg) -> dict:
    """The dataset arguments every family takes from a run config."""
    return {"video": cfg.data.video, "cache_dir": cfg.data.cache_dir, "seed": cfg.training.seed, "log": log_main}


@dataclass
class Prepared:
    rows: datasets.Dataset  # memory-mapped
    skips: list[list[str]]  # [reason, where, message] of each bad record, in file order
    directory: Path
    reused: bool  # found in the cache rather than built by this call


@contextmanager
def local_main_first():
    """The first local rank runs the block first while the node's other ranks wait (they then find its
    result); an error there still releases them, and they meet the same error themselves."""
    several, first = distributed(), is_node_main()
    if several and not first:
        dist.barrier()
    try:
        yield
    finally:
        if several and first:
            dist.barrier()


def prepare(source: Source, encode: Callable[[dict, str], dict], features: datasets.Features, parts: dict,
            root: Path, on_error: str, log: Callable[[str], None] = print, before_encoding=None) -> Prepared:
    """The prepared rows of ``source``: from the cache when ``parts`` (what ``encode`` depends on) and the
    source are unchanged, else built. ``encode(record, where)`` validates one record and returns its columns,
    raising DataError for a bad one (raised under on_error raise, counted under skip);
    ``before_encoding(records)`` sees each chunk of records first (to tokenize them in one call)."""
    key = fingerprint({"source": source_state(source), "format": FORMAT_VERSION, "vlft": _version(), **parts})
    directory = root / key
    reused = True
    with local_main_first():
        if not (directory / META).is_file():
            reused = False
            start = time.time()
            _build(source, encode, features, directory, on_error, before_encoding)
            log(f"data: prepared {source.path} in {time.time() - start:.1f} s -> {directory}")
    meta = json.loads((directory / META).read_text())
    skips = json.loads((directory / SKIPS).read_text())
    if reused:
        log(f"data: reusing prepared {source.path} ({meta['rows']} records) from the cache {directory}")
    if skips and on_error == "raise":
        reason, where, message = skips[0]
        raise DataError(message, reason=reason, where=where)
    return Prepared(datasets.Dataset.from_file(str(directory / ROWS)), skips, directory, reused)


def _version() -> str:
    from vlft import __version__

    return __version__


def read_encoded(source: Source, encode: Callable[[dict, str], object], before_encoding=None, chunk: int = 1024
                 ) -> Iterator[tuple[str, object, DataError | None]]:
    """(where, encode(record, where), None) for every record of the source, or (where, None, error) for a bad
    one; a problem with the whole source (reason None) raises. ``before_encoding`` sees each chunk first."""
    raw = iter_raw(source)
    while block := list(itertools.islice(raw, chunk)):
        parsed = []
        for where, item in block:
            try:
                parsed.append((where, parse_line(item, where), None))
            except DataError as err:
                parsed.append((where, None, err))
        if before_encoding is not None:
            before_encoding([record for _, record, error in parsed if error is None])
        for where, record, error in parsed:
            if error is None:
                try:
                    yield where, encode(record, where), None
                    continue
                except DataError as err:
                    error = err
            if error.reason is None:
                raise error
            yield where, None, error


def read_records(source: Source | str, validate: Callable[[dict, str], None]) -> Iterator[tuple[str, dict]]:
    """(where, record) of every record, each checked by ``validate``; the first bad one raises."""
    source = source if isinstance(source, Source) else Source(str(source))

    def checked(record: dict, where: str) -> dict:
        validate(record, where)
        return record

    for where, record, error in read_encoded(source, checked):
        if error is not None:
            raise error
        yield where, record


def _build(source: Source, encode, features: datasets.Features, directory: Path, on_error: str,
           before_encoding=None) -> None:
    """Write the directory under a temporary name and rename it into place: whole or not at all (two nodes
    sharing the cache may both build it; the first rename wins)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    skips, rows = [], 0
    try:
        with ArrowWriter(features=features, path=str(staging / ROWS)) as writer:
            for where, row, error in read_encoded(source, encode, before_encoding):
                if error is not None:
                    if on_error == "raise":
                        raise error
                    skips.append([error.reason, error.where or where, str(error)])
                    continue
                writer.write(row)
                rows += 1
            writer.finalize()
        (staging / SKIPS).write_text(json.dumps(skips))
        (staging / META).write_text(json.dumps({"source": source.path, "rows": rows, "skipped": len(skips),
                                                "features": features.to_dict()}, indent=1))
        try:
            os.rename(staging, directory)
        except OSError:  # built meanwhile by another node's main process
            if not (directory / META).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
