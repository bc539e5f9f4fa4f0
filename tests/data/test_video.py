"""Video frames with decord: the indices each sampling takes, frames in time order, and bad videos (missing,
corrupt, empty, too short) named with their reason -- raised, or counted when skipping. Also the synthetic
video set's promise (8 frames see every event, the middle frame none) and video records in both families."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_video
from vlft.config import VideoConfig
from vlft.data.records import DataError
from vlft.data.video import frame_range, read_frames, sample_indices

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "data_prep"))
import synthetic_video  # noqa: E402


def test_uniform_takes_the_centre_frame_of_each_equal_part():
    assert sample_indices(0, 16, 8.0, VideoConfig(num_frames=8)) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(0, 16, 8.0, VideoConfig(num_frames=1)) == [8]
    assert sample_indices(0, 5, 8.0, VideoConfig(num_frames=8)) == [0, 1, 2, 3, 4]  # fewer exist: too short


def test_fps_takes_one_frame_per_interval_and_thins_evenly_past_the_cap():
    assert sample_indices(0, 16, 8.0, VideoConfig("fps", fps=2.0)) == [0, 4, 8, 12]
    assert sample_indices(0, 16, 8.0, VideoConfig("fps", fps=2.0, max_frames=3)) == [0, 8, 12]


def test_segment_in_seconds_restricts_sampling():
    assert frame_range(16, 8.0, 1.0, 2.0) == (8, 16)
    assert frame_range(16, 8.0, None, None) == (0, 16)
    assert sample_indices(*frame_range(16, 8.0, 1.0, 2.0), 8.0, VideoConfig(num_frames=4)) == [9, 11, 13, 15]


def test_read_frames_returns_the_sampled_frames_in_time_order(tmp_path):
    video = write_video(tmp_path / "ramp.mp4", frames=16)
    frames = read_frames(video, VideoConfig(num_frames=4), "record 0")
    brightness = [int(np.asarray(f).mean().round()) for f in frames]
    assert [f.size for f in frames] == [(32, 32)] * 4
    assert brightness == pytest.approx([10 * t + 20 for t in (2, 6, 10, 14)], abs=3)
    segment = read_frames(video, VideoConfig(num_frames=2), "record 0", start=1.0, end=2.0)
    assert [int(np.asarray(f).mean().round()) for f in segment] == pytest.approx([10 * t + 20 for t in (10, 14)],
                                                                                abs=3)


def bad_videos(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, reason, what the message says)."""
    good = write_video(tmp_path / "good.mp4", frames=16)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    short = write_video(tmp_path / "short.mp4", frames=3)
    return {"missing": (tmp_path / "nope.mp4", "missing_video", "video not found"),
            "corrupt": (corrupt, "corrupt_video", "cannot read video"),
            "truncated": (truncated, "corrupt_video", "cannot read video"),
            "empty": (empty, "empty_video", "video file is empty (0 bytes)"),
            "short": (short, "too_short_video", "video too short: 3 frame(s)")}


@pytest.mark.parametrize("name", ["missing", "corrupt", "truncated", "empty", "short"])
def test_bad_video_raises_naming_the_record_file_and_reason(tmp_path, name):
    path, reason, says = bad_videos(tmp_path)[name]
    with pytest.raises(DataError, match=rf"^train.json record 3: {re.escape(says)}") as caught:
        read_frames(path, VideoConfig(num_frames=8), "train.json record 3")
    assert caught.value.reason == reason and str(path) in str(caught.value)


def test_a_segment_past_the_end_is_too_short(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=16)  # 2 s
    with pytest.raises(DataError, match=r"0 frame\(s\) in segment \[5.0, 6.0\] s") as caught:
        read_frames(video, VideoConfig(num_frames=2), "r", start=5.0, end=6.0)
    assert caught.value.reason == "too_short_video"


def video_records(tmp_path: Path) -> Path:
    """Six records: one per bad video, and one good."""
    videos = bad_videos(tmp_path)
    records = []
    for name, (path, _, _) in [*videos.items(), ("good", (tmp_path / "good.mp4", None, None))]:
        records.append({"id": name, "video": path.name, "task": "video_qa", "answers": ["up"],
                        "conversations": [{"from": "human", "value": "<video>\nwhich way?"},
                                          {"from": "gpt", "value": "up"}]})
    out = tmp_path / "videos.json"
    out.write_text(json.dumps(records))
    return out


def test_validate_data_opens_every_video_and_reports_each_bad_one(tmp_path, capsys):
    import yaml

    from tests.conftest import tiny_config_dict
    from vlft.cli import main

    write_video(tmp_path / "good.mp4", frames=16)
    records = video_records(tmp_path)
    cfg = tiny_config_dict({"train": records, "test": records, "images": tmp_path}, tmp_path / "run")
    cfg["data"]["video"] = {"num_frames": 4}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["validate-data", str(tmp_path / "run.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    train = sorted(line.split(": ")[1] + " " + line.split("(id ")[1].split(")")[0]
                   for line in lines if line.startswith("train: ") and "(id " in line)
    assert train == ["corrupt_video corrupt", "corrupt_video truncated", "empty_video empty",
                     "missing_video missing", "too_short_video short"]
    assert "train: 5 record(s) bad: missing_video 1, corrupt_video 2, empty_video 1, too_short_video 1" in lines


def test_skip_counts_bad_videos_by_reason_and_keeps_the_good_one(tmp_path):
    from vlft.data.seq2seq import QuestionAnswerDataset, Seq2SeqCollator
    from vlft.models import vl_bart
    from vlft.models.vl_bart_modeling import grid_features

    tiny = vl_bart.TinyModelConfig(image_size=32, vision_hidden_size=32, text_hidden_size=32, text_layers=1,
                                   num_heads=2)
    bundle = vl_bart.load(vl_bart.ModelConfig(family="vl_bart"),
                          str(vl_bart.build_tiny(tiny, ["which way ?", "up"], tmp_path / "model")))
    dataset = QuestionAnswerDataset(str(video_records(tmp_path)), bundle, str(tmp_path), max_length=32,
                                    on_error="skip", video=VideoConfig(num_frames=8))
    assert dataset.skips.counts() == {"missing_video": 1}  # known before training: the file is not there
    items = [dataset[i] for i in range(len(dataset))]
    batch = Seq2SeqCollator(bundle.tokenizer.pad_token_id)(items)
    dataset.skips.extend(batch.pop("skipped"))
    assert dataset.skips.counts() == {"missing_video": 1, "corrupt_video": 2, "empty_video": 1, "too_short_video": 1}
    assert batch["pixel_values"].shape == (1, 8, 3, 32, 32) and batch["image_mask"].tolist() == [[1] * 8]
    out = bundle.model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"])
    assert torch.isfinite(out.loss)
    assert grid_features(bundle.model.vision, batch["pixel_values"][0]).shape[0] == 8


def test_grouped_questions_of_a_clip_share_one_pass_of_the_vision_tower_with_the_same_loss(tmp_path):
    """data.group_by_record: a clip with three questions is one example; its frames go through the vision
    tower once, and the logits and the loss are those of the three questions as separate examples."""
    from vlft.data.seq2seq import QuestionAnswerDataset, Seq2SeqCollator
    from vlft.models import vl_bart

    write_video(tmp_path / "clip.mp4", frames=16)
    turns = [{"from": f, "value": v} for f, v in [("human", "<video>\nwhich way?"), ("gpt", "up"),
                                                    ("human", "how many times?"), ("gpt", "two"),
                                                    ("human", "what color?"), ("gpt", "red green")]]
    records = [{"id": "c", "video": "clip.mp4", "task": "video_qa", "conversations": turns}]
    (tmp_path / "train.json").write_text(json.dumps(records))
    tiny = vl_bart.TinyModelConfig(image_size=32, vision_hidden_size=32, text_hidden_size=32, text_layers=1,
                                   num_heads=2)
    texts = ["which way ? how many times ? what color ?", "up two red green"]
    bundle = vl_bart.load(vl_bart.ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(tiny, texts, tmp_path / "m")))
    kwargs = {"max_length": 32, "video": VideoConfig(num_frames=4)}
    separate = QuestionAnswerDataset(str(tmp_path / "train.json"), bundle, str(tmp_path), **kwargs)
    grouped = QuestionAnswerDataset(str(tmp_path / "train.json"), bundle, str(tmp_path), group_by_record=True,
                                    **kwargs)
    assert (len(separate), len(grouped)) == (3, 1)
    collate = Seq2SeqCollator(bundle.tokenizer.pad_token_id)
    one, three = collate([grouped[0]]), collate([separate[i] for i in range(3)])
    assert one["pixel_values"].shape == (1, 4, 3, 32, 32) and three["pixel_values"].shape == (3, 4, 3, 32, 32)
    assert one["visual_index"].tolist() == [0, 0, 0] and "visual_index" not in three
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(one[key], three[key])
    model = bundle.model.eval()
    seen = []
    stem = model.vision.conv1  # grid features enter the ResNet at its stem
    hook = stem.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    out_one, out_three = model(**one), model(**three)
    hook.remove()
    assert seen == [4, 12]  # frames through the tower: 4 for the grouped clip, 4 per question otherwise
    torch.testing.assert_close(out_one.logits, out_three.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_one.loss, out_three.loss, rtol=1e-6, atol=1e-6)


def test_vl_bart_pools_frames_past_its_groups_in_time_order():
    from vlft.models.vl_bart_modeling import pool_frames

    features = torch.arange(12, dtype=torch.float).reshape(1, 12, 1, 1).expand(1, 12, 2, 3)
    pooled, mask = pool_frames(features, torch.ones(1, 12, dtype=torch.long), 4)
    assert pooled[0, :, 0, 0].tolist() == [1.0, 4.0, 7.0, 10.0] and mask.tolist() == [[1, 1, 1, 1]]


def test_llava_video_record_gives_one_image_token_run_per_frame(tmp_path):
    from tests.conftest import tiny_config_dict
    from vlft.config import config_from_dict
    from vlft.data.dataset import ConversationDataset, VisionTextCollator
    from vlft.models import llava

    records = video_records(tmp_path)
    cfg = config_from_dict(tiny_config_dict({"train": records, "test": records, "images": tmp_path}, tmp_path / "r"))
    base = llava.build_tiny(cfg.model.tiny, ["which way ?", "up"], tmp_path / "model")
    bundle = llava.load(cfg.model, str(base))
    dataset = ConversationDataset(str(records), bundle, str(tmp_path), max_length=256, on_error="skip",
                                  video=VideoConfig(num_frames=4, min_frames=2))
    good = next(i for i, r in enumerate(dataset.records) if r["id"] == "good")
    short = next(i for i, r in enumerate(dataset.records) if r["id"] == "short")
    item, short_item = dataset[good], dataset[short]  # 3 frames >= min_frames 2: kept, with 3 frames
    assert (item["input_ids"] == bundle.image_token_id).sum() == 4 * bundle.num_image_tokens
    assert item["visual"]["pixel_values"][0].shape[0] == 4 and short_item["visual"]["pixel_values"][0].shape[0] == 3
    batch = VisionTextCollator(bundle.tokenizer.pad_token_id)([item, short_item])
    assert batch["pixel_values"].shape[0] == 7
    loss = bundle.model(**batch).loss
    assert torch.isfinite(loss)


def test_synthetic_clips_show_every_event_in_eight_frames_and_none_in_the_middle_one():
    import random

    rng = random.Random(3)
    eight, middle = sample_indices(0, 16, 8, VideoConfig(num_frames=8)), sample_indices(0, 16, 8, VideoConfig(
        num_frames=1))
    for _ in range(50):
        story = synthetic_video.make_story(rng)
        hidden = story["hidden_b"]
        assert len(hidden) == story["flashes"] and set(hidden) <= set(eight) and not set(hidden) & set(middle)
        assert all(b - a >= 4 for a, b in zip(hidden, hidden[1:], strict=False))  # separate flashes stay separate
        assert max(story["appear_a"], story["appear_b"]) < middle[0]  # both shapes are there in the middle frame
        first_seen = [t for t in eight if t >= min(story["appear_a"], story["appear_b"])][0]
        assert first_seen < max(story["appear_a"], story["appear_b"])  # 8 frames see who came first
        dx, dy = synthetic_video.DIRECTIONS[story["direction"]]
        travel, radius, size = synthetic_video.TRAVEL, synthetic_video.RADIUS, synthetic_video.SIZE
        end = (story["start"][0] + dx * travel, story["start"][1] + dy * travel)
        assert all(radius <= c <= size - radius for c in (*story["start"], *end))  # A stays in the frame
        middle_xy = [(a + b) / 2 for a, b in zip(story["start"], end, strict=True)]
        assert all(abs(c - size / 2) <= 5 for c in middle_xy)  # the same square for every direction
        middle = tuple(middle_xy)
        for turned in ((travel / 2, 0), (0, travel / 2)):  # clear of A's path in every direction
            ends = [(middle[0] + k * turned[0], middle[1] + k * turned[1]) for k in (-1, 1)]
            assert synthetic_video.distance_to_segment(story["spot_b"], *ends) >= 2 * radius + 2


def test_the_shape_question_names_the_shape_of_that_colour_in_the_middle_frame():
    """A single-frame question: its answer is what the middle frame shows in the named colour."""
    import random

    rng = random.Random(5)
    for _ in range(30):
        story = synthetic_video.make_story(rng)
        (_, question, answer, choices), = [q for q in synthetic_video.questions(story) if q[0] == "shape"]
        color = re.fullmatch(r"what shape is the (\w+) one\?", question).group(1)
        assert kind_drawn_in(synthetic_video.render(story)[8], color) == answer
        assert sorted(choices) == sorted(synthetic_video.SHAPES)


def kind_drawn_in(frame: np.ndarray, color: str) -> str | None:
    """The shape drawn in `color`, told by its area (PIL at radius 7: square 15x15 = 225 px, circle 177,
    triangle 113); None where that colour is not in the frame."""
    areas = {"square": 225, "circle": 177, "triangle": 113}
    drawn = int((np.abs(frame.astype(int) - synthetic_video.COLORS[color]).sum(-1) < 10).sum())
    return min(areas, key=lambda kind: abs(areas[kind] - drawn)) if drawn else None


def test_the_shapes_question_lists_both_kinds_in_the_middle_frame_and_its_choices_are_the_pairs():
    import random

    rng = random.Random(6)
    for _ in range(30):
        story = synthetic_video.make_story(rng)
        (_, question, answer, choices), = [q for q in synthetic_video.questions(story) if q[0] == "shapes"]
        middle = synthetic_video.render(story)[8]
        seen = sorted(k for k in (kind_drawn_in(middle, c) for c in synthetic_video.COLORS) if k)
        assert question == "what shapes are there?" and answer == " and ".join(seen) and len(seen) == 2
        assert answer in choices and len(set(choices)) == 3
