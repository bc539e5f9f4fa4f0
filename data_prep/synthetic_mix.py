"""An offline set shaped like LLaVA-1.5's instruction mix (`llava_v1_5_mix665k.json`), on easy-VQA's images.

    python data_prep/easy_vqa.py --out data/easy_vqa                 # the images (and their questions)
    python data_prep/synthetic_mix.py --records 665000 --out data/synthetic_mix
    deepspeed --num_gpus 2 scripts/train.py configs/llava_dora_tiny.yaml \\
        data.train=data/synthetic_mix/llava_mix.json data.image_folder=data/easy_vqa/images

Writes `llava_mix.json`: a JSON list in the exact schema of the real file (`id`; `image`, a path relative to
easy-VQA's image folder, absent from text-only records; `conversations` of alternating `human`/`gpt` turns, the
image's `<image>` at the start of the first human turn), and `summary.json` (records, turns and words by part).

The parts and their share of the records are the LLaVA-1.5 paper's data mixture (arXiv 2310.03744, Table 7:
LLaVA-Instruct 158K = conversation 58K + detail 23K + complex reasoning 77K; ShareGPT 40K text-only; VQAv2 83K;
GQA 72K; OKVQA 9K; OCR-VQA 80K; A-OKVQA 66K; TextCaps 22K; RefCOCO 48K; VG 86K; 665K in all). Questions per
record: VQAv2 5.4 on average (its 443,757 training questions over 82,783 images, grouped by image as LLaVA-1.5
does); for the other parts the ranges below are chosen, not measured (the real file is not available offline):
short-answer parts 1-10 questions, region parts 2-10, chat 2-6 exchanges, ShareGPT 1-8; the answers of
ShareGPT and of detail and complex-reasoning records are paragraphs of 60-300 words, as in LLaVA-Instruct and
ShareGPT. Short answers are easy-VQA's real answers about the record's image (with LLaVA-1.5's formatting
prompts), so a model can learn them; long answers are filler text around the image's known shape and colour.
N up to 665,000 and beyond: images are reused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from easy_vqa import SHAPES, image_facts, import_easy_vqa  # noqa: E402

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."
# part -> (records in the 665K mix, in thousands; questions per record (low, high); kind)
PARTS = {
    "sharegpt": (40, (1, 8), "text"), "conversation": (58, (2, 6), "chat"), "detail": (23, (1, 1), "detail"),
    "complex_reasoning": (77, (1, 1), "reasoning"), "vqav2": (83, (1, 10), "short"), "gqa": (72, (1, 10), "short"),
    "okvqa": (9, (1, 1), "short"), "ocrvqa": (80, (1, 10), "short"), "aokvqa": (66, (1, 1), "choice"),
    "textcaps": (22, (1, 1), "caption"), "refcoco": (48, (2, 10), "short"), "vg": (86, (2, 10), "short"),
}
WORDS = ("the a of and to in is that it for on with as this was are be by at from or an which one can there all "
         "we about more when will what their if some would so them these other into has two time could like then "
         "first way many may made over such where after most only also new work just because through good well "
         "much very people years different same each part place shape color image picture centre left right "
         "top bottom edge background white bright simple plain drawing flat small large size area line corner "
         "side region object figure scene view visible clear").split()


def paragraph(rng: random.Random, words: int, about: str = "") -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"{about} {text}." if about else text.capitalize() + "."


def subject(facts: dict) -> str:
    return f"a {facts.get('color', 'coloured')} {facts.get('shape', 'shape')}"


def turns_for(kind: str, rng: random.Random, count: int, qa: list[tuple[str, str]], facts: dict) -> list[tuple]:
    """(question, answer) pairs of one record."""
    if kind == "text":
        return [(paragraph(rng, rng.randint(10, 60)), paragraph(rng, rng.randint(80, 300))) for _ in range(count)]
    if kind == "chat":
        return [(q + "?", f"The image shows {subject(facts)}. " + paragraph(rng, rng.randint(15, 60)))
                for q, _ in rng.sample(qa, min(count, len(qa)))]
    if kind == "detail":
        return [("Describe the following image in detail.",
                 paragraph(rng, rng.randint(60, 150), f"The image shows {subject(facts)} on a white background."))]
    if kind == "reasoning":
        return [(f"What can you tell about the {facts.get('shape', 'shape')} in this image?",
                 paragraph(rng, rng.randint(60, 150), f"It is {subject(facts)}."))]
    if kind == "choice":
        options = rng.sample(SHAPES, len(SHAPES))
        answer = "ABC"[options.index(facts["shape"])] if "shape" in facts else "A"
        lines = [f"{letter}. {option}" for letter, option in zip("ABC", options, strict=True)]
        question = "What shape is in the image?\n" + "\n".join(lines)
        return [(f"{question}\n{CHOICE}", answer)]
    if kind == "caption":
        return [(CAPTION, f"{subject(facts).capitalize()} on a white background.")]
    picked = [qa[(start + k) % len(qa)] for start in [rng.randrange(len(qa))] for k in range(count)]
    return [(f"{q}\n{SHORT}", a) for q, a in picked]


def make_record(index: int, part: str, rng: random.Random, images: list[int], qa: dict, facts: dict) -> dict:
    _, (low, high), kind = PARTS[part]
    count = rng.randint(low, high) if part != "vqav2" else min(10, max(1, round(rng.gauss(5.4, 2.0))))
    if kind == "text":
        pairs, record = turns_for(kind, rng, count, [], {}), {"id": f"sharegpt-{index}"}
    else:
        image = rng.choice(images)
        pairs = turns_for(kind, rng, count, qa[image], facts.get(image, {}))
        record = {"id": f"{part}-{index}", "image": f"train/{image}.png"}
    turns = []
    for k, (question, answer) in enumerate(pairs):
        prefix = "<image>\n" if k == 0 and kind != "text" else ""
        turns += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    return {**record, "conversations": turns}


def generate(records: int, seed: int = 0) -> tuple[list[dict], dict]:
    easy_vqa = import_easy_vqa()
    questions, answers, image_ids = easy_vqa.get_train_questions()
    qa = defaultdict(list)
    for q, a, i in zip(questions, answers, image_ids, strict=True):
        qa[i].append((q, a))
    facts = image_facts(questions, answers, image_ids)
    rng = random.Random(seed)
    names, weights = list(PARTS), [PARTS[p][0] for p in PARTS]
    images = sorted(qa)
    out, summary = [], defaultdict(lambda: {"records": 0, "turns": 0, "words": 0})
    for index in range(records):
        part = rng.choices(names, weights)[0]
        record = make_record(index, part, rng, images, qa, facts)
        out.append(record)
        entry = summary[part]
        entry["records"] += 1
        entry["turns"] += len(record["conversations"]) // 2
        entry["words"] += sum(len(t["value"].split()) for t in record["conversations"])
    return out, dict(summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records to write (665,000 for the full mix)")
    parser.add_argument("--out", default="data/synthetic_mix", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records, summary = generate(args.records, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "llava_mix.json").open("w") as f:  # one record per line inside the list: readable, diffable
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    text_only = summary.get("sharegpt", {}).get("records", 0)
    summary = {"records": len(records), "text_only": text_only, "parts": summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"records": len(records), "text_only": text_only, "out": str(out / "llava_mix.json")}))


if __name__ == "__main__":
    main()
