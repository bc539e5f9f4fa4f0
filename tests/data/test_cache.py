"""The data layer on `datasets`: records prepared once and memory-mapped, reused while nothing they depend on
changes; JSON, JSONL, Parquet and save_to_disk sources; weighted mixing; LLaVA's modality-grouped order."""

import json
import os

import datasets
import numpy as np
import pytest

from vlft.config import ModelConfig, TinyModelConfig
from vlft.data.dataset import ConversationDataset, PromptDataset
from vlft.data.records import DataError
from vlft.data.sampling import modality_length_grouped_order
from vlft.data.sources import Source
from vlft.models.llava import build_tiny, load

TINY = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=32,
                       text_layers=1, num_heads=2)


@pytest.fixture()
def bundle(shapes_data, tmp_path):
    texts = [t["value"] for r in json.loads(shapes_data["train"].read_text()) for t in r["conversations"]]
    return load(ModelConfig(), str(build_tiny(TINY, texts, tmp_path / "tiny")), with_model=False)


def make(path, bundle, images, cache, max_length=128, **kwargs):
    return ConversationDataset(path, bundle, str(images), max_length, cache_dir=str(cache), log=lambda m: None,
                               **kwargs)


def cache_files(cache) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}


def test_a_second_load_reuses_the_prepared_rows_without_tokenizing(shapes_data, bundle, tmp_path, monkeypatch):
    cache, messages = tmp_path / "cache", []
    first = ConversationDataset(shapes_data["train"], bundle, str(shapes_data["images"]), 128,
                                cache_dir=str(cache), log=messages.append)
    assert not first.reused and messages[-1].startswith(f"data: prepared {shapes_data['train']} in ")
    written = cache_files(cache)
    assert len([f for f in written if f.endswith("data.arrow")]) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(ConversationDataset, "columns", no_tokenizing)
    second = ConversationDataset(shapes_data["train"], bundle, str(shapes_data["images"]), 128,
                                 cache_dir=str(cache), log=messages.append)
    assert second.reused and messages[-1] == (f"data: reusing prepared {shapes_data['train']} (12 records) from "
                                              f"the cache {next(cache.iterdir())}")
    assert cache_files(cache) == written  # nothing rewritten
    for i in range(len(first)):
        for key in ("input_ids", "labels"):
            assert first[i][key].equal(second[i][key])
        assert first[i]["visual"]["pixel_values"][0].equal(second[i]["visual"]["pixel_values"][0])
    # the rows are read from the memory-mapped Arrow file, not held as Python objects
    assert isinstance(second.rows.data, datasets.table.MemoryMappedTable)


def test_changing_the_data_file_the_tokenizer_or_max_length_prepares_again(shapes_data, bundle, tmp_path):
    cache = tmp_path / "cache"
    data = tmp_path / "train.json"
    records = json.loads(shapes_data["train"].read_text())
    data.write_text(json.dumps(records))
    assert not make(data, bundle, shapes_data["images"], cache).reused
    assert make(data, bundle, shapes_data["images"], cache).reused
    data.write_text(json.dumps(records[:6]))
    changed = make(data, bundle, shapes_data["images"], cache)
    assert not changed.reused and len(changed) == 6
    assert not make(data, bundle, shapes_data["images"], cache, max_length=100).reused
    other = load(ModelConfig(), str(build_tiny(TINY, ["other words entirely"], tmp_path / "other")), with_model=False)
    assert not make(data, other, shapes_data["images"], cache).reused
    assert len(list(cache.iterdir())) == 4


def test_a_cache_made_while_skipping_still_raises_the_first_bad_record(shapes_data, bundle, tmp_path):
    records = json.loads(shapes_data["train"].read_text())
    bad = [dict(records[1], id="gone", image="nope.png"), dict(records[2], id="also-gone", image="nope2.png")]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [records[0], *bad, records[3]]))
    lenient = make(data, bundle, shapes_data["images"], tmp_path / "cache", on_error="skip")
    assert len(lenient) == 2 and lenient.skips.counts() == {"missing_image": 2}
    with pytest.raises(DataError, match=r"train.jsonl line 2 \(id gone\): image not found: .*nope.png"):
        make(data, bundle, shapes_data["images"], tmp_path / "cache")


def test_json_jsonl_parquet_and_save_to_disk_give_the_same_examples(shapes_data, bundle, tmp_path):
    records = json.loads(shapes_data["test"].read_text())
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    rows = [{**r, "answers": r["answers"]} for r in records]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    sources = [shapes_data["test"], tmp_path / "t.jsonl", tmp_path / "t.parquet",
               Source(str(tmp_path / "saved"), split="validation")]
    loaded = [PromptDataset([s] if isinstance(s, Source) else s, bundle, str(shapes_data["images"]),
                            cache_dir=str(tmp_path / "cache"), log=lambda m: None) for s in sources]
    assert [len(d) for d in loaded] == [len(records)] * 4
    assert loaded[2].where(0) == f"{tmp_path / 't.parquet'} row 0 (id test-0-0)"
    for dataset in loaded[1:]:
        for i in range(len(records)):
            assert dataset[i]["input_ids"].equal(loaded[0][i]["input_ids"])
            assert dataset[i]["references"] == loaded[0][i]["references"] == records[i]["answers"]


def test_a_missing_hub_dataset_is_named(shapes_data, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"no-such-org/no-such-set: not a local file or directory, and the hub "
                                        r"dataset could not be loaded"):
        make("no-such-org/no-such-set", bundle, shapes_data["images"], tmp_path / "cache")


def test_weights_set_each_sources_share_of_an_epoch(shapes_data, bundle, tmp_path):
    from vlft.config import DataSource

    records = json.loads(shapes_data["train"].read_text())
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    small.write_text(json.dumps([dict(r, id=f"s{i}") for i, r in enumerate(records[:3])]))
    large.write_text(json.dumps([dict(r, id=f"l{i}") for i, r in enumerate(records)]))
    mixed = make([DataSource(str(small), weight=0.5), DataSource(str(large), weight=0.5)], bundle,
                 shapes_data["images"], tmp_path / "cache", seed=3)
    ids = [mixed.records[i]["id"] for i in range(len(mixed))]
    assert len(ids) == 15  # an epoch: as many examples as the sources hold together
    small_ids = [i for i in ids if i.startswith("s")]
    assert len(small_ids) == 8 and set(small_ids) == {"s0", "s1", "s2"}  # 3 records repeated up to half
    assert len(ids) - len(small_ids) == 7 and len(set(ids) - set(small_ids)) == 7  # 7 of 12, each once
    plain = make([str(small), str(large)], bundle, shapes_data["images"], tmp_path / "cache")
    assert [plain.records[i]["id"] for i in range(len(plain))] == [f"s{i}" for i in range(3)] + [
        f"l{i}" for i in range(12)]


def test_modality_groups_fill_whole_steps_longest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 100, size=50)
    multimodal = rng.random(50) < 0.6
    order = modality_length_grouped_order(lengths, multimodal, group=8, rng=np.random.default_rng(1))
    assert sorted(order) == list(range(50))
    full = (multimodal.sum() // 8 + (~multimodal).sum() // 8) * 8
    for start in range(0, full, 8):
        group = order[start:start + 8]
        assert len(set(multimodal[group])) == 1  # one modality per optimizer step
        assert list(lengths[group]) == sorted(lengths[group], reverse=True)
    assert list(lengths[order[full:]]) == sorted(lengths[order[full:]], reverse=True)


def test_the_cache_directory_defaults_to_the_environment(shapes_data, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("VLFT_CACHE_DIR", str(tmp_path / "from-env"))
    dataset = ConversationDataset(shapes_data["train"], bundle, str(shapes_data["images"]), 128, log=lambda m: None)
    assert os.path.commonpath([dataset.rows.cache_files[0]["filename"], str(tmp_path / "from-env")]) == str(
        tmp_path / "from-env")


def test_the_trainer_orders_steps_by_modality_or_keeps_file_order(tmp_path):
    """The sampler a run gets: data.group_by_modality_length (every optimizer step over all ranks is one
    modality), data.shuffle false (file order)."""
    from types import SimpleNamespace

    from tests.conftest import tiny_config_dict, write_mixed_dataset
    from vlft.config import config_from_dict
    from vlft.models import llava
    from vlft.train.trainer import VlftTrainer

    data = write_mixed_dataset(tmp_path / "mixed")
    cfg = config_from_dict(tiny_config_dict(data, tmp_path / "run"), [f"data.train={data['mixed_train']}",
                                                                      "data.group_by_modality_length=true",
                                                                      "data.video.num_frames=2"])
    texts = [t["value"] for r in json.loads(data["mixed_train"].read_text()) for t in r["conversations"]]
    bundle = load(ModelConfig(), str(build_tiny(TINY, texts, tmp_path / "tiny")), with_model=False)
    dataset = llava.train_dataset(cfg, bundle)
    args = SimpleNamespace(per_device_train_batch_size=2, world_size=2, gradient_accumulation_steps=1,
                           data_seed=None, seed=0)
    trainer = SimpleNamespace(run_config=cfg, args=args, train_dataset=dataset)
    order = list(VlftTrainer._get_train_sampler(trainer))
    multimodal = [bool(dataset.records[i].get("image") or dataset.records[i].get("video")) for i in order]
    assert sorted(order) == list(range(12)) and multimodal[:4] in ([True] * 4, [False] * 4)
    assert all(len(set(multimodal[k:k + 4])) == 1 for k in range(0, 8, 4))  # 8 of 12 with images: 2 whole steps
    cfg.data.group_by_modality_length, cfg.data.shuffle = False, False
    assert list(VlftTrainer._get_train_sampler(trainer)) == list(range(12))
