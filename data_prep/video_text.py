"""Convert the official video-text benchmark files to vlft video records.

    python data_prep/video_text.py tvqa --annotations tvqa_val.jsonl --out data/video/tvqa_val.jsonl --eval
    python data_prep/video_text.py how2qa --annotations how2qa_val.jsonl --out data/video/how2qa_val.jsonl --eval
    python data_prep/video_text.py msrvtt-qa --annotations val_qa.json --out data/video/msrvtt_qa_val.jsonl --eval
    python data_prep/video_text.py msvd-qa --annotations val_qa.json --mapping youtube_mapping.txt --out ...
    python data_prep/video_text.py tvc --annotations tvc_val_release.jsonl --out data/video/tvc_val.jsonl --eval
    python data_prep/video_text.py youcook2 --annotations youcookii_annotations_trainval.json --split validation ...
    python data_prep/video_text.py msrvtt-caption --annotations train_val_videodatainfo.json --split validate ...

Formats read: TVQA and How2QA (the HERO/VALUE release) jsonl rows {"qid", "q", "a0".."a4", "answer_idx",
"ts": "start-end", "vid_name"}; MSRVTT-QA / MSVD-QA JSON lists {"id", "question", "answer", "video_id"}
(MSVD's `youtube_mapping.txt` maps "<youtube id> vid<n>" lines); TVC jsonl {"vid_name", "ts": [s, e],
"clip_id", "descs": [{"desc"}]}; YouCook2 {"database": {id: {"subset", "annotations": [{"id", "segment",
"sentence"}]}}}; MSR-VTT {"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}.

Video paths in the records are relative to data.image_folder: TVQA/How2QA/TVC `<vid_name>.mp4`, MSRVTT
`video<n>.mp4`, MSVD `<youtube clip name>.avi`, YouCook2 `<split>/<video id>.mp4`. Timestamps become the
record's start/end. Multiple choice lists its choices in the question (task video_mc); training records
hold one question (or caption) and its answer, --eval records keep every reference in `answers`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_text import FormatError, _field, _load  # noqa: E402

CAPTION_PROMPT = "Describe what happens in the video."


def _jsonl(path: str | Path, what: str) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise FormatError(f"{what} file not found: {path}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise FormatError(f"{path} line {number}: not valid JSON: {err.msg}") from None
    return rows


def _record(task: str, rid, video: str, prompt: str, answer: str, answers: list[str] | None, **extra) -> dict:
    record = {"id": str(rid), "task": task, "video": video, **extra,
              "conversations": [{"from": "human", "value": f"<video>\n{prompt}"}, {"from": "gpt", "value": answer}]}
    if answers is not None:
        record.update(question_id=rid, answers=answers)
    return record


def _timestamps(ts, path, where: str) -> dict:
    """TVQA's "60.56-67.77" or a [start, end] pair -> {"start", "end"} (none for TVQA's "NaN-NaN")."""
    try:
        start, end = (float(t) for t in (ts.split("-") if isinstance(ts, str) else ts))
    except (ValueError, TypeError):
        raise FormatError(f"{path} {where}: field 'ts' must be 'start-end' or [start, end], got {ts!r}") from None
    return {} if start != start or end != end else {"start": start, "end": end}  # NaN: the whole clip


def multiple_choice(path: str, for_eval: bool) -> list[dict]:
    """TVQA and How2QA: a question, answers a0..a<k>, the right one's index, a timestamp."""
    records = []
    for i, row in enumerate(_jsonl(path, "multiple-choice annotations"), 1):
        where = f"line {i}"
        choices = [row[f"a{k}"] for k in range(10) if f"a{k}" in row]
        if len(choices) < 2:
            raise FormatError(f"{path} {where}: fewer than two answers a0, a1, ...")
        right = _field(row, "answer_idx", path, where)
        if not isinstance(right, int) or not 0 <= right < len(choices):
            raise FormatError(f"{path} {where}: answer_idx {right!r} does not name one of {len(choices)} answers")
        prompt = f"{_field(row, 'q', path, where)} choices: {' | '.join(choices)}"
        video = f"{_field(row, 'vid_name', path, where)}.mp4"
        records.append(_record("video_mc", _field(row, "qid", path, where), video, prompt, choices[right],
                               [choices[right]] if for_eval else None, choices=choices,
                               **_timestamps(row.get("ts", "NaN-NaN"), path, where)))
    return records


def open_ended(path: str, for_eval: bool, mapping: str | None = None) -> list[dict]:
    """MSRVTT-QA (video_id n -> video<n>.mp4) and MSVD-QA (vid<n> -> its clip name via youtube_mapping.txt)."""
    names = None
    if mapping:
        names = {}
        for line in Path(mapping).read_text().splitlines():
            if line.strip():
                clip, vid = line.split()
                names[int(vid.removeprefix("vid"))] = f"{clip}.avi"
    rows = _load(path, "open-ended QA annotations")
    if not isinstance(rows, list):
        raise FormatError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    records = []
    for i, row in enumerate(rows):
        where = f"question {i}"
        video_id = _field(row, "video_id", path, where)
        if names is None:
            video = f"video{video_id}.mp4"
        elif video_id in names:
            video = names[video_id]
        else:
            raise FormatError(f"{mapping}: no clip for video_id {video_id} ({path} {where})")
        answer = _field(row, "answer", path, where)
        records.append(_record("video_qa", _field(row, "id", path, where), video, _field(row, "question", path, where),
                               answer, [answer] if for_eval else None))
    return records


def captions(path: str, dataset: str, for_eval: bool, split: str | None) -> list[dict]:
    """TVC, YouCook2 or MSR-VTT captions: one record per clip (eval) or per caption (training)."""
    clips = []  # (id, video, references, timestamps)
    if dataset == "tvc":
        for i, row in enumerate(_jsonl(path, "TVC annotations"), 1):
            where = f"line {i}"
            descs = [_field(d, "desc", path, where) for d in _field(row, "descs", path, where)]
            clips.append((_field(row, "clip_id", path, where), f"{_field(row, 'vid_name', path, where)}.mp4", descs,
                          _timestamps(_field(row, "ts", path, where), path, where)))
    elif dataset == "youcook2":
        database = _field(_load(path, "YouCook2 annotations"), "database", path, "top level")
        for video_id, video in database.items():
            if split and video.get("subset") != split:
                continue
            for segment in _field(video, "annotations", path, f"video {video_id}"):
                clips.append((f"{video_id}_{segment['id']}", f"{video['subset']}/{video_id}.mp4",
                              [segment["sentence"]], _timestamps(segment["segment"], path, f"video {video_id}")))
    else:
        data = _load(path, "MSR-VTT annotations")
        by_video: dict[str, list[str]] = {}
        for s in _field(data, "sentences", path, "top level"):
            by_video.setdefault(s["video_id"], []).append(s["caption"])
        for video in _field(data, "videos", path, "top level"):
            if not split or video.get("split") == split:
                clips.append((video["video_id"], f"{video['video_id']}.mp4", by_video.get(video["video_id"], []), {}))
    records = []
    for rid, video, references, timestamps in clips:
        if not references:
            raise FormatError(f"{path}: clip {rid} has no caption")
        if for_eval:
            records.append(_record("video_caption", rid, video, CAPTION_PROMPT, references[0], references,
                                   **timestamps))
        else:
            records += [_record("video_caption", f"{rid}-{k}", video, CAPTION_PROMPT, ref, None, **timestamps)
                        for k, ref in enumerate(references)]
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["tvqa", "how2qa", "msrvtt-qa", "msvd-qa", "tvc", "youcook2",
                                            "msrvtt-caption"])
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--mapping", help="msvd-qa: youtube_mapping.txt")
    parser.add_argument("--split", help="youcook2: training|validation; msrvtt-caption: train|validate|test")
    parser.add_argument("--out", required=True, help="records file (.jsonl or .json)")
    parser.add_argument("--eval", action="store_true", help="keep every reference (evaluation records)")
    args = parser.parse_args(argv)
    try:
        if args.dataset in ("tvqa", "how2qa"):
            records = multiple_choice(args.annotations, args.eval)
        elif args.dataset in ("msrvtt-qa", "msvd-qa"):
            records = open_ended(args.annotations, args.eval, args.mapping)
        else:
            records = captions(args.annotations, args.dataset.removesuffix("-caption"), args.eval, args.split)
    except FormatError as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in records) if out.suffix == ".jsonl" else json.dumps(records, indent=1)
    out.write_text(text + "\n")
    print(json.dumps({"records": len(records), "out": str(out)}))


if __name__ == "__main__":
    main()
