"""An offline video QA and captioning set: small mp4 clips of coloured shapes, written with PyAV.

    python data_prep/synthetic_video.py --out data/synthetic_video [--train 800 --test 150 --seed 0]

Each clip (64x64, 16 frames at 8 fps) shows two shapes of different kinds and colours. Shape A enters
first or second and moves left, right, up or down; shape B flashes (vanishes for a frame) one, two or
three times. Timings are set so that 8 uniformly sampled frames see every event and the middle frame
alone sees none. A crosses most of the frame (40 of 64 px), and its path's middle is drawn from the same
square whatever the direction, so that where A is in the middle frame says nothing about its direction; B
stays clear of the paths A could take in any direction, so that A never hides B's flashes and B's place
beside A does not give away A's axis. Questions, with a `category`:
- direction: "which way does the red circle move?" (left / right / up / down)    -- needs time
- order: "which shape appears first?" (the kind of A or of B)                    -- needs time
- count: "how many times does the blue square flash?" (one / two / three)         -- needs time
- control: "what color is the circle?"                                             -- one frame is enough
- shape: "what shape is the red one?" (A's or B's kind)                            -- one frame is enough
- shapes: "what shapes are there?" (both kinds, e.g. "circle and square")          -- one frame is enough
in two forms: open-ended (task video_qa) and multiple choice with the choices in the question (video_mc).
Also one caption per clip (task video_caption), e.g. "a red circle moves left".
The shape question is the only one whose answer needs the colour word tied to one of the two shapes: the
others can be answered from what moves, what flashes or what is there first. The shapes question names
shapes without that tie: it teaches the shape names the order question answers with, from any frame.

Files: videos/<split>_<n>.mp4; <split>.json (training: one multi-turn record per clip with every
question in both forms, in a shuffled order; test: one record per question, with `answers` and
`choices`); caption_<split>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

SIZE, FRAMES, FPS, RADIUS, TRAVEL = 64, 16, 8, 7, 40
COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
COUNTS = {1: "one", 2: "two", 3: "three"}


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, color: str, x: float, y: float) -> None:
    box = (x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS)
    if kind == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif kind == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(x, y - RADIUS), (x - RADIUS, y + RADIUS), (x + RADIUS, y + RADIUS)], fill=COLORS[color])


def distance_to_segment(point, start, end) -> float:
    (px, py), (ax, ay), (bx, by) = point, start, end
    length2 = (bx - ax) ** 2 + (by - ay) ** 2
    t = max(0.0, min(1.0, ((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / length2))
    return ((px - ax - t * (bx - ax)) ** 2 + (py - ay - t * (by - ay)) ** 2) ** 0.5


def make_story(rng: random.Random) -> dict:
    kind_a, kind_b = rng.sample(SHAPES, 2)
    color_a, color_b = rng.sample(list(COLORS), 2)
    direction = rng.choice(list(DIRECTIONS))
    a_first = rng.random() < 0.5
    early, late = rng.randint(0, 1), 4  # both are on screen by the middle frame (8)
    flashes = rng.choice(list(COUNTS))
    dx, dy = DIRECTIONS[direction]
    # the path's middle is uniform over the same square whatever the direction (one frame cannot tell it);
    # the path crosses most of the frame, so that its direction shows at a coarse (patch) scale
    reach = SIZE / 2 - RADIUS - TRAVEL / 2
    mid = (rng.uniform(SIZE / 2 - reach, SIZE / 2 + reach), rng.uniform(SIZE / 2 - reach, SIZE / 2 + reach))
    start = (mid[0] - dx * TRAVEL / 2, mid[1] - dy * TRAVEL / 2)
    # B stays clear of the paths A would take in all four directions, not just its own: A never hides B's
    # flashes, and where B sits next to A in one frame says nothing about A's axis of motion
    paths = [((mid[0] - TRAVEL / 2, mid[1]), (mid[0] + TRAVEL / 2, mid[1])),
             ((mid[0], mid[1] - TRAVEL / 2), (mid[0], mid[1] + TRAVEL / 2))]
    spot_b = (rng.uniform(12, 52), rng.uniform(12, 52))
    while min(distance_to_segment(spot_b, *path) for path in paths) < 2 * RADIUS + 2:
        spot_b = (rng.uniform(12, 52), rng.uniform(12, 52))
    appear_b = late if a_first else early
    # B vanishes for single odd frames, 4 apart: 8 uniformly sampled frames (1, 3, ..., 15) see every flash,
    # the middle frame (8) sees none
    odd = list(range(5, FRAMES - 2, 2))
    hidden = list(rng.choice([c for c in itertools.combinations(odd, flashes)
                              if all(b - a >= 4 for a, b in zip(c, c[1:], strict=False))]))
    named = rng.choice([(kind_a, color_a), (kind_b, color_b)])  # the shape question's shape
    return {"a": (kind_a, color_a), "b": (kind_b, color_b), "direction": direction, "flashes": flashes,
            "appear_a": early if a_first else late, "appear_b": appear_b, "start": start, "spot_b": spot_b,
            "hidden_b": hidden, "first": kind_a if a_first else kind_b, "named": named}


def render(story: dict) -> list[np.ndarray]:
    dx, dy = DIRECTIONS[story["direction"]]
    frames = []
    for t in range(FRAMES):
        image = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        if t >= story["appear_b"] and t not in story["hidden_b"]:
            draw_shape(draw, *story["b"], *story["spot_b"])
        if t >= story["appear_a"]:
            progress = TRAVEL * t / (FRAMES - 1)
            draw_shape(draw, *story["a"], story["start"][0] + dx * progress, story["start"][1] + dy * progress)
        frames.append(np.asarray(image))
    return frames


def write_mp4(frames: list[np.ndarray], path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def questions(story: dict) -> list[tuple[str, str, str, list[str]]]:
    """(category, question, answer, choices) of one clip."""
    (kind_a, color_a), (kind_b, color_b) = story["a"], story["b"]
    return [
        ("direction", f"which way does the {color_a} {kind_a} move?", story["direction"], list(DIRECTIONS)),
        ("order", "which shape appears first?", story["first"], sorted([kind_a, kind_b])),
        ("count", f"how many times does the {color_b} {kind_b} flash?", COUNTS[story["flashes"]],
         list(COUNTS.values())),
        ("control", f"what color is the {kind_a}?", color_a, list(COLORS)),
        ("shape", f"what shape is the {story['named'][1]} one?", story["named"][0], list(SHAPES)),
        ("shapes", "what shapes are there?", " and ".join(sorted([kind_a, kind_b])),
         [" and ".join(pair) for pair in itertools.combinations(SHAPES, 2)]),
    ]


def as_choice(question: str, choices: list[str]) -> str:
    return f"{question} choices: {', '.join(choices)}"


def records(split: str, index: int, story: dict, video: str) -> tuple[list[dict], dict]:
    asked = questions(story)
    caption = f"a {story['a'][1]} {story['a'][0]} moves {story['direction']}"
    caption_record = {"id": f"{split}-{index}-caption", "video": video, "task": "video_caption",
                      "answers": [caption],
                      "conversations": [{"from": "human", "value": "<video>\ndescribe the video."},
                                        {"from": "gpt", "value": caption}]}
    if split == "train":
        # every question in both forms, in an order of its own per clip: the model has to read the question
        pairs = [(q, a) for _, q, a, _ in asked] + [(as_choice(q, c), a) for _, q, a, c in asked]
        random.Random(f"{split}-{index}").shuffle(pairs)
        turns = []
        for k, (text, answer) in enumerate(pairs):
            turns += [{"from": "human", "value": ("<video>\n" if k == 0 else "") + text},
                      {"from": "gpt", "value": answer}]
        return [{"id": f"train-{index}", "video": video, "task": "video_qa", "conversations": turns}], caption_record
    out = []
    for category, question, answer, choices in asked:
        for task, text in (("video_qa", question), ("video_mc", as_choice(question, choices))):
            out.append({"id": f"{split}-{index}-{category}-{task}", "video": video, "task": task,
                        "category": category, "answers": [answer], "choices": choices,
                        "conversations": [{"from": "human", "value": "<video>\n" + text},
                                          {"from": "gpt", "value": answer}]})
    return out, caption_record


def prepare(out: Path, counts: dict[str, int], seed: int) -> dict:
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    summary = {}
    for split, count in counts.items():
        qa, captions = [], []
        for i in tqdm(range(count), desc=f"{split} clips", unit="clip"):
            story = make_story(rng)
            video = f"videos/{split}_{i}.mp4"
            if not (out / video).is_file():
                write_mp4(render(story), out / video)
            clip_records, caption_record = records(split, i, story, video)
            qa += clip_records
            captions.append(caption_record)
        (out / f"{split}.json").write_text(json.dumps(qa, indent=1))
        (out / f"caption_{split}.json").write_text(json.dumps(captions, indent=1))
        summary[split] = {"clips": count, "records": len(qa)}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic_video")
    parser.add_argument("--train", type=int, default=800, help="training clips")
    parser.add_argument("--test", type=int, default=150, help="test clips")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(prepare(Path(args.out), {"train": args.train, "test": args.test}, args.seed)))


if __name__ == "__main__":
    main()
