"""Frames per second of video decoding: decord (what vlft uses) against PyAV, same files, same frames.

    python benchmarks/video_decode.py                 # 24 clips of 320x240, 10 s at 30 fps (written first)
    python benchmarks/video_decode.py --videos DIR    # your own mp4 files instead
    python benchmarks/video_decode.py --json

Strategies: `uniform-8` (8 frames spread over the clip), `fps-1` (one frame a second, at most 16),
`segment-8` (8 frames of the clip's middle third, as with TVQA timestamps). decord seeks to the frames it
needs (`get_batch`); PyAV decodes the stream from the start (or from a seek to the segment) and keeps the
sampled frames, which is how a PyAV loader without an index gets exact frames. Each row decodes every
file once; frames/s counts the frames returned.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlft.config import VideoConfig  # noqa: E402
from vlft.data.video import frame_range, sample_indices  # noqa: E402

STRATEGIES = {"uniform-8": (VideoConfig("uniform", num_frames=8), False),
              "fps-1": (VideoConfig("fps", fps=1.0, max_frames=16), False),
              "segment-8": (VideoConfig("uniform", num_frames=8), True)}


def write_clips(directory: Path, count: int, seconds: int = 10, fps: int = 30) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = directory / f"clip_{i}.mp4"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for t in range(seconds * fps):
                frame = np.roll(base, 4 * t, axis=1)  # moving texture: real motion for the encoder
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def plan(total: int, fps: float, sampling: VideoConfig, segment: bool) -> list[int]:
    duration = total / fps
    start, end = (duration / 3, 2 * duration / 3) if segment else (None, None)
    return sample_indices(*frame_range(total, fps, start, end), fps, sampling)


def decord_frames(path: Path, sampling: VideoConfig, segment: bool) -> int:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    indices = plan(len(reader), float(reader.get_avg_fps()), sampling, segment)
    return len(reader.get_batch(indices).asnumpy())


def pyav_frames(path: Path, sampling: VideoConfig, segment: bool) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        indices = plan(stream.frames, fps, sampling, segment)
        wanted, got = set(indices), 0
        if segment:  # seek to the keyframe before the segment, then decode forward
            container.seek(int(indices[0] / fps / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            index = round(float(frame.pts * stream.time_base) * fps)
            if index in wanted:
                frame.to_ndarray(format="rgb24")
                got += 1
            if index >= indices[-1]:
                break
        return got


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", help="a directory of mp4 files (default: write test clips)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(Path(args.videos).glob("*.mp4")) if args.videos else write_clips(Path(tmp), args.clips)
        rows = []
        for name, (sampling, segment) in STRATEGIES.items():
            for reader, decode in (("decord", decord_frames), ("pyav", pyav_frames)):
                start = time.perf_counter()
                frames = sum(decode(p, sampling, segment) for p in paths)
                seconds = time.perf_counter() - start
                rows.append({"strategy": name, "reader": reader, "videos": len(paths), "frames": frames,
                             "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 1)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'strategy':<11} {'reader':<7} {'videos':>6} {'frames':>7} {'seconds':>8} {'frames/s':>9}")
    for r in rows:
        print(f"{r['strategy']:<11} {r['reader']:<7} {r['videos']:>6} {r['frames']:>7} {r['seconds']:>8.2f} "
              f"{r['frames_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
