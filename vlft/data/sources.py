"""Where records come from, read one at a time with the position an error message names.

A source is a JSON list, JSONL or Parquet file, a directory written by `datasets`' `save_to_disk`, or a
hub dataset id (`org/name`, loaded with `datasets.load_dataset`). JSON and JSONL are parsed here, record
by record, rather than by Arrow's JSON reader: real files mix types within a field (LLaVA-665k's `id` is
a number in some records and a string in others) and hold bad records that must be named, not fail the
whole file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlft.data.records import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class Source:
    path: str
    weight: float | None = None
    split: str = "train"


def as_sources(value) -> list[Source]:
    """data.train / data.eval (a path, or a list of paths and {path, weight, split} blocks) as Sources."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [Source(str(item)) if isinstance(item, (str, Path)) else
            Source(str(item.path), item.weight, item.split) for item in items]


def is_hub_id(path: str) -> bool:
    """`org/name` or `name` that is not on disk and has no data-file suffix."""
    return not Path(path).exists() and not path.endswith(FILE_SUFFIXES) and bool(_HUB_ID.match(path))


def source_state(source: Source) -> dict:
    """What identifies the source's content for the cache: a file's size and modification time, a
    directory's files, a hub id and split."""
    path = Path(source.path)
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"directory": str(path.resolve()), "split": source.split,
                "files": [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    return {"hub": source.path, "split": source.split}


def iter_raw(source: Source) -> Iterator[tuple[str, object]]:
    """(where, raw record) in order; the raw record is a parsed object, or the text of a JSONL line (parsed by
    ``parse_line`` so that a bad line is one bad record). A problem with the whole source raises DataError
    with reason None."""
    path = Path(source.path)
    if path.is_file():
        if path.suffix == ".jsonl":
            yield from _jsonl(path)
        elif path.suffix == ".parquet":
            yield from _parquet(path)
        else:
            yield from _json_list(path)
    elif path.is_dir():
        yield from _rows(_load_from_disk(path, source.split), f"{path}")
    elif is_hub_id(source.path):
        yield from _rows(_load_from_hub(source), f"{source.path}[{source.split}]")
    else:
        raise DataError(f"data file not found: {path}", reason=None)


def parse_line(raw: object, where: str) -> object:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON: {err.msg}", where=where) from None


def _jsonl(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            if line.strip():
                yield f"{path} line {line_no}", line


def _json_list(path: Path) -> Iterator[tuple[str, object]]:
    """Records of a JSON list, decoded one at a time (a 1 GB file never becomes one Python list)."""
    text = path.read_text(encoding="utf-8")
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    pos = space.match(text, 0).end()
    if not text.startswith("[", pos):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON at line {err.lineno}: {err.msg}", reason=None) from None
        raise DataError(f"{path}: expected a JSON list of records, got {type(value).__name__}", reason=None)
    pos = space.match(text, pos + 1).end()
    number = 0
    while not text.startswith("]", pos):
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON at line {err.lineno}: {err.msg}", reason=None) from None
        yield f"{path} record {number}", record
        number += 1
        pos = space.match(text, pos).end()
        if text.startswith(",", pos):
            pos = space.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}: not valid JSON at line {line}: expected ',' or ']'", reason=None)


def _parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield f"{path} row {number}", _without_nulls(row)
            number += 1


def _rows(dataset, label: str) -> Iterator[tuple[str, dict]]:
    for number, row in enumerate(dataset):
        yield f"{label} row {number}", _without_nulls(row)


def _without_nulls(row: dict) -> dict:
    """Arrow gives every row every column; a field a record does not have comes back as None."""
    return {key: value for key, value in row.items() if value is not None}


def _load_from_disk(path: Path, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{path}: not a dataset directory written by save_to_disk ({err})", reason=None) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split '{split}' (it has {', '.join(loaded)})", reason=None)
        loaded = loaded[split]
    return loaded


def _load_from_hub(source: Source):
    import datasets

    try:
        return datasets.load_dataset(source.path, split=source.split)
    except Exception as err:  # the hub raises many kinds: offline, unknown name, gated, no such split
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{source.path}: not a local file or directory, and the hub dataset could not be loaded "
                        f"({first})", reason=None) from None
