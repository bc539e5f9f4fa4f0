"""Video frames with decord: which frames to take, and reading them with errors that name the file.

Sampling (`data.video`):
- `uniform`: `num_frames` frames spread evenly over the clip (each frame the centre of its 1/N of the clip,
  as TSN / VL-Adapter sample);
- `fps`: one frame every 1/`fps` seconds, at most `max_frames` (evenly thinned past it);
- either one within a segment: a record's `start` / `end` (seconds, TVQA-style timestamps) restrict
  sampling to that part of the clip.

A missing file, a file decord cannot open (corrupt), a video with no frames (empty) and a clip or segment
with fewer frames than needed (too short) raise DataError naming the file, with a reason that
`data.on_error: skip` counts. Frames are decoded where the dataset's __getitem__ runs: in DataLoader workers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from vlft.config import VideoConfig
from vlft.data.records import DataError


def frame_range(num_frames: int, video_fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """[first, last) frame indices of the clip, or of its [start, end] segment in seconds."""
    first = 0 if start is None else max(0, math.floor(start * video_fps))
    last = num_frames if end is None else min(num_frames, math.ceil(end * video_fps))
    return first, last


def sample_indices(first: int, last: int, video_fps: float, sampling: VideoConfig) -> list[int]:
    """Frame indices to decode from [first, last), as `sampling` says (may be fewer than needed)."""
    count = last - first
    if count <= 0:
        return []
    if sampling.sampling == "uniform":
        n = min(sampling.num_frames, count)
        return [first + int((i + 0.5) * count / n) for i in range(n)]
    step = video_fps / sampling.fps  # frames between two samples
    indices = [first + int(k * step) for k in range(math.ceil(count / step))]
    if len(indices) > sampling.max_frames:
        keep = np.linspace(0, len(indices) - 1, sampling.max_frames).round().astype(int)
        indices = [indices[k] for k in keep]
    return indices


def _open(path: Path, where: str):
    import decord

    if not path.is_file():
        raise DataError(f"{where}: video not found: {path}", reason="missing_video", where=where)
    if path.stat().st_size == 0:
        raise DataError(f"{where}: video file is empty (0 bytes): {path}", reason="empty_video", where=where)
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: cannot read video {path}: {message}", reason="corrupt_video", where=where) from None


def read_frames(path: str | Path, sampling: VideoConfig, where: str, start: float | None = None,
                end: float | None = None) -> list[Image.Image]:
    """The sampled frames of one video (or of its [start, end] segment) as RGB images, in time order."""
    import decord

    path = Path(path)
    reader = _open(path, where)
    total = len(reader)
    if total == 0:
        raise DataError(f"{where}: video has no frames: {path}", reason="empty_video", where=where)
    video_fps = float(reader.get_avg_fps()) or 1.0
    if start is not None and end is not None and end <= start:
        raise DataError(f"{where}: segment end {end} s is not after its start {start} s", where=where)
    first, last = frame_range(total, video_fps, start, end)
    indices = sample_indices(first, last, video_fps, sampling)
    if len(indices) < sampling.needed():
        segment = "" if start is None and end is None else f" in segment [{start}, {end}] s"
        raise DataError(f"{where}: video too short: {max(0, last - first)} frame(s){segment} of {path} "
                        f"({total} frames at {video_fps:.3g} fps), {sampling.needed()} needed",
                        reason="too_short_video", where=where)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:  # a stream that breaks partway
        raise DataError(f"{where}: cannot decode frames {indices[0]}..{indices[-1]} of {path}: "
                        f"{str(err).strip().splitlines()[0]}", reason="corrupt_video", where=where) from None
    return [Image.fromarray(frame) for frame in frames]
