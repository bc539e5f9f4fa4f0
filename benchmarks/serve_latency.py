"""Latency of one answer as `vlft predict`, `chat` and `demo` give it: a run (adapter on its base, unmerged)
against its merged model, on this machine's CPU (or GPU with --device cuda).

    python benchmarks/serve_latency.py runs/llava_dora_tiny merged/llava_dora_tiny \\
        --image data/easy_vqa/images/test/0.png --question "What shape is in the image?"

Per directory: the load time, then one answer (record written and prepared, image read, greedy generation,
decoded) as the median of --repeats after a warm-up, and for text models the time to the first streamed piece;
the directories' repeats are interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import peft  # noqa: F401  (imported before any load is timed)
import torch

import vlft.eval.run_eval  # noqa: F401
from vlft.serve import Predictor, load_served


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def first_piece_seconds(predictor: Predictor, record: dict) -> float:
    start = time.perf_counter()
    stream = predictor.stream(record)
    first = None
    for piece in stream:
        if piece and first is None:
            first = time.perf_counter() - start
    return first if first is not None else float("nan")


def measure(dirs: list[str], image: str, question: str, repeats: int, device: str) -> list[dict]:
    """Rows per directory; the repeats of the directories interleaved, so that a busy machine slows them alike."""
    rows, predictors = [], []
    for directory in dirs:
        start = time.perf_counter()
        predictor = Predictor(load_served(directory, device))
        rows.append({"dir": directory, "how": predictor.served.kind, "load_s": time.perf_counter() - start,
                     "answer_s": [], "first_piece_s": []})
        predictors.append((predictor, predictor.record(question, image)))
        predictor.predict([predictors[-1][1]])  # warm-up: first-call allocations and lazy imports
    for _ in range(repeats):
        for row, (predictor, record) in zip(rows, predictors, strict=True):
            row["answer_s"].append(seconds(lambda p=predictor, r=record: p.predict([r])))
            if predictor.labels is None:
                row["first_piece_s"].append(first_piece_seconds(predictor, record))
    for row, (predictor, record) in zip(rows, predictors, strict=True):
        (answer,) = predictor.predict([record])
        row["answer"] = answer.get("answer", answer.get("labels"))
        predictor.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="run directories and merged models")
    parser.add_argument("--image", required=True)
    parser.add_argument("--question", default="")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    header = ("directory", "model", "load s", "one answer ms", "first piece ms")
    print("| {:<40} | {:<8} | {:>6} | {:>13} | {:>14} | answer".format(*header))
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 8}|{'-' * 15}|{'-' * 16}|-------")
    for row in measure(args.dirs, args.image, args.question, args.repeats, args.device):
        answer_ms = 1000 * statistics.median(row["answer_s"])
        first = f"{1000 * statistics.median(row['first_piece_s']):.1f}" if row["first_piece_s"] else "-"
        print(f"| {row['dir']:<40} | {row['how']:<8} | {row['load_s']:>6.2f} | {answer_ms:>13.1f} | {first:>14} | "
              f"{row['answer']}", flush=True)


if __name__ == "__main__":
    main()
