"""Bad data: `on_error: raise` stops with one line naming the file and record; `skip` counts by reason;
`vlft validate-data` reports every bad record without training."""

import json
import re

import pytest
import yaml

from tests.conftest import tiny_config_dict
from tests.faults.conftest import EXPECTED_SKIPS, write_jsonl
from vlft.cli import main

# fault -> (what the one-line error says, reason counted under skip)
FAULTS = {
    "malformed_json": (r"line 2: not valid JSON", "malformed_record"),
    "no_conversations": (r"line 2 \(id no-conv\): field 'conversations' must be a non-empty list", "malformed_record"),
    "image_count": (r"line 2 \(id two-placeholders\): 2 '<image>' placeholder\(s\) for 1 image",
                    "image_count_mismatch"),
    "missing_image": (r"line 2 \(id missing\): image not found: .*nope.png", "missing_image"),
    "truncated_png": (r"line 2 \(id trunc-png\): cannot read image .*truncated.png: .*truncated", "corrupt_image"),
    "truncated_jpeg": (r"line 2 \(id trunc-jpg\): cannot read image .*truncated.jpg: .*truncated", "corrupt_image"),
    "not_an_image": (r"line 2 \(id garbage\): cannot read image .*garbage.png: cannot identify", "corrupt_image"),
    "too_long": (r"line 2 \(id long\): its image tokens end at position \d+, beyond data.max_length=128",
                 "too_long"),
}


def write_config(faulty_data, train, name: str, **data) -> str:
    cfg = tiny_config_dict(faulty_data, faulty_data["root"] / name, max_steps=-1, epochs=1.0,
                           per_device_batch_size=4, save_steps=1000)
    cfg["data"].update(train=str(train), eval=str(train), **data)
    cfg["eval"]["max_new_tokens"] = 2
    path = faulty_data["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_raise_stops_with_one_line_naming_the_file_and_record(faulty_data, fault, capsys):
    train = write_jsonl(faulty_data["root"] / "bad.jsonl", faulty_data["good"][:4], [faulty_data["bad"][fault]])
    assert main(["train", write_config(faulty_data, train, "raise")]) == 2
    # one error line (it may follow a progress bar that did not end its line)
    errors = [line[line.index("error: "):] for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {train} line 2")
    assert re.search(FAULTS[fault][0], errors[0]), errors[0]
    assert not (faulty_data["root"] / "raise" / "adapter_model.safetensors").exists()


def test_skip_trains_on_the_good_records_and_counts_the_bad_by_reason(faulty_data, capsys):
    bad = faulty_data["bad"]
    train = write_jsonl(faulty_data["root"] / "bad.jsonl", faulty_data["good"], list(bad.values()))
    assert main(["train", write_config(faulty_data, train, "skip", on_error="skip")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((faulty_data["root"] / "skip" / "metrics.json").read_text())
    assert metrics["skipped_records"] == EXPECTED_SKIPS
    # 12 good records of 4 per step, plus the 3 with corrupt images that were read and dropped: 4 steps
    assert metrics["global_step"] == 4
    total = sum(EXPECTED_SKIPS.values())
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and epoch_lines[-1].endswith(
        f"{total} record(s) skipped: " + ", ".join(f"{r} {n}" for r, n in EXPECTED_SKIPS.items()))
    # evaluation: the corrupt images drop 3 questions, which are counted; 12 good ones plus the long one are scored
    assert metrics["eval"]["eval_num_questions"] == 13
    assert metrics["eval"]["eval_skipped_records"]["corrupt_image"] == 3


def test_validate_data_reports_every_bad_record_without_training(faulty_data, capsys):
    bad = faulty_data["bad"]
    train = write_jsonl(faulty_data["root"] / "bad.jsonl", faulty_data["good"], list(bad.values()))
    assert main(["validate-data", write_config(faulty_data, train, "validate")]) == 1
    out = capsys.readouterr().out.splitlines()
    summaries = [line for line in out if re.match(r"(train|eval): (\d+ record\(s\)|no records) bad", line)]
    train_lines = [line for line in out if line.startswith("train: ") and line not in summaries]
    assert len(train_lines) == sum(EXPECTED_SKIPS.values())
    for fault, (_, reason) in FAULTS.items():
        assert any(line.startswith(f"train: {reason}: ") for line in train_lines), fault
    assert summaries[0] == f"train: {sum(EXPECTED_SKIPS.values())} record(s) bad: " + ", ".join(
        f"{r} {n}" for r, n in EXPECTED_SKIPS.items())
    # the eval split has no length limit, so the long record is not bad there
    assert summaries[1].startswith(f"eval: {sum(EXPECTED_SKIPS.values()) - 1} record(s) bad: ")
    assert not (faulty_data["root"] / "validate" / "checkpoint-1").exists()


def test_validate_data_passes_clean_data(faulty_data, capsys):
    cfg = tiny_config_dict(faulty_data, faulty_data["root"] / "clean")
    path = faulty_data["root"] / "clean.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate-data", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["train: no records bad", "eval: no records bad"]
