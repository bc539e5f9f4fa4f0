"""The VL-BART family: a tiny BART + CLIP-ResNet saved and loaded back through the same code, DoRA on the
ResNet's Conv2d layers and BART's Linear layers (tied lm_head left alone), frozen BatchNorm statistics,
and a short end-to-end run."""

import copy
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config_dict
from vlft.adapters import apply_adapters
from vlft.config import AdaptersConfig, ConfigError, ModelConfig, TinyModelConfig, config_from_dict
from vlft.data.records import DataError
from vlft.models import vl_bart
from vlft.models.vl_bart_modeling import grid_features

TINY = TinyModelConfig(image_size=64, vision_hidden_size=32, text_hidden_size=32, text_layers=1, num_heads=2)
TEXTS = ["what shape is this?", "circle", "rectangle", "what color is the shape?", "red"]


def batch(tokenizer):
    ids = tokenizer(["vqa : what shape is this ?"], add_special_tokens=False, return_tensors="pt").input_ids
    labels = tokenizer(["circle"], add_special_tokens=False, return_tensors="pt").input_ids
    torch.manual_seed(0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(2, 3, 64, 64)[:1],
            "labels": labels}


def test_tiny_vl_bart_round_trips_through_load(tmp_path):
    first = vl_bart.load(ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(TINY, TEXTS, tmp_path)))
    again = vl_bart.load(ModelConfig(family="vl_bart"), str(tmp_path))
    inputs = batch(first.tokenizer)
    torch.testing.assert_close(first.model.eval()(**inputs).logits, again.model.eval()(**inputs).logits,
                               rtol=0, atol=0)
    # the image enters the encoder: 2x2 ResNet cells in front of the text
    assert grid_features(first.model.vision, inputs["pixel_values"]).shape[1] == 4


def test_the_tiny_resnet_keeps_the_scale_of_its_input_and_tells_images_apart(tmp_path):
    # Frozen BatchNorms at their initial statistics: with PyTorch's default conv init the last stage came out
    # ~1000x weaker than the pixels (std 0.0005 for inputs of std 0.5), too weak for DoRA to build on.
    tiny = TinyModelConfig(image_size=96, vision_hidden_size=64, text_hidden_size=32, text_layers=1, num_heads=2)
    vision = vl_bart.load(ModelConfig(family="vl_bart"),
                          str(vl_bart.build_tiny(tiny, TEXTS, tmp_path))).model.vision.eval()
    torch.manual_seed(0)
    pixels = torch.randn(8, 3, 96, 96)
    with torch.no_grad():
        cells = grid_features(vision, pixels)
    assert cells.shape == (8, 9, 512)
    assert 0.1 < cells.std().item() / pixels.std().item() < 10
    assert cells.std(dim=0).mean().item() > 0.01 * pixels.std().item()  # different images, different features


def test_each_cell_carries_its_box_so_the_same_features_in_two_places_differ():
    from vlft.models.vl_bart_modeling import Projector, cell_boxes

    expected = torch.tensor([[0, 0, .5, .5, .25], [.5, 0, 1, .5, .25], [0, .5, .5, 1, .25], [.5, .5, 1, 1, .25]])
    torch.testing.assert_close(cell_boxes(4), expected)  # row-major, as a ResNet grid flattens
    with pytest.raises(ValueError, match="visual features of 6 cells: expected a square grid"):
        cell_boxes(6)
    torch.manual_seed(0)
    same_everywhere = torch.randn(1, 1, 1, 16).expand(1, 1, 9, 16)
    projector = Projector(16, 32)
    tokens = projector(same_everywhere)[0]
    assert tokens.shape == (9, 32)
    features_alone = projector.norm(projector.linear(same_everywhere))[0, 0, 0]
    # from the start, the same features in two cells give two tokens (the box and place embeddings of
    # an early version started at zero and stayed ~20x smaller than the features after training)
    assert min(torch.dist(tokens[i], tokens[j]).item() for i in range(9) for j in range(i)) > 0.25
    assert 0.5 < ((tokens - features_alone).norm(dim=1) / features_alone.norm()).min() < 2


def test_a_build_without_the_box_layernorm_is_refused_naming_the_file(tmp_path):
    """A run directory made before the box embedding had its LayerNorm: a clear error, not a fresh init."""
    from safetensors.torch import load_file, save_file

    from vlft.models.base import ModelLoadError

    directory = vl_bart.build_tiny(TINY, TEXTS, tmp_path)
    weights = directory / "model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("projector.box_norm.")}
    save_file(state, str(weights))
    with pytest.raises(ModelLoadError, match=r"model.safetensors: does not match this VL-BART \(missing "
                                             r"\['projector.box_norm.bias', 'projector.box_norm.weight'\]"):
        vl_bart.load(ModelConfig(family="vl_bart"), str(directory))


def test_dora_reaches_resnet_conv2d_and_bart_linear_but_not_the_tied_head(tmp_path):
    bundle = vl_bart.load(ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(TINY, TEXTS, tmp_path)))
    model = apply_adapters(bundle.model, vl_bart.TOWERS, AdaptersConfig(language="dora", vision="dora",
                                                                        projector="full", r=4, alpha=8))
    adapted = {name.removeprefix("base_model.model."): m.get_base_layer() for name, m in model.named_modules()
               if hasattr(m, "lora_magnitude_vector") and "default" in m.lora_magnitude_vector}
    convs = {n for n, m in adapted.items() if isinstance(m, torch.nn.Conv2d)}
    assert {"vision.conv1", "vision.layer1.0.conv2", "vision.layer4.0.downsample.0"} <= convs
    assert {"language.model.encoder.layers.0.self_attn.q_proj", "language.model.decoder.layers.0.fc2"} <= set(adapted)
    assert "language.lm_head" not in adapted
    model.train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    loss = model(**batch(bundle.tokenizer)).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("vision.conv1.lora_A" in n for n in grads) and any("lora_magnitude_vector" in n for n in grads)


def test_a_fully_trained_resnet_runs_and_trains_its_own_copy(tmp_path):
    """`adapters.vision: full`: peft keeps the frozen ResNet beside the trained copy; the copy must be the
    one that runs (its gradients set, the original's not) and a change to it must change the output;
    with adapters disabled the original runs again."""
    bundle = vl_bart.load(ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(TINY, TEXTS, tmp_path)))
    base = copy.deepcopy(bundle.model).eval()
    model = apply_adapters(bundle.model, vl_bart.TOWERS, AdaptersConfig(language="dora", vision="full",
                                                                        projector="full", r=4, alpha=8))
    inputs = batch(bundle.tokenizer)
    loss = model(**inputs).loss
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.endswith("vision.modules_to_save.default.conv1.weight") for n in grads)
    assert not any("vision.original_module." in n for n in grads)
    trained = [m for n, m in model.named_modules() if n.endswith("vision.modules_to_save.default")][0]
    with torch.no_grad():
        before = model(**inputs).logits
        trained.conv1.weight.mul_(0.5)
        assert not torch.allclose(before, model(**inputs).logits)
        with model.eval().disable_adapter():
            torch.testing.assert_close(model(**inputs).logits, base(**inputs).logits)


def test_short_run_learns_and_writes_a_peft_adapter(shapes_data, tmp_path):
    from vlft.train.run import train

    cfg = tiny_config_dict(shapes_data, tmp_path / "run", max_steps=40, per_device_batch_size=8, lr=5e-3,
                           logging_steps=5, save_steps=40)
    cfg["model"] = {"family": "vl_bart", "name_or_path": "tiny", "tiny": vars(TINY)}
    result = train(config_from_dict(cfg))
    state = json.loads((tmp_path / "run" / "checkpoint-40" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert result.metrics["global_step"] == 40 and len(losses) >= 8
    assert losses[-1] < 0.6 * losses[0]
    assert result.metrics["eval"]["eval_num_questions"] == 24
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["use_dora"] is True


def test_a_padded_second_image_changes_nothing_and_a_real_one_does(tmp_path):
    """NLVR2-style pairs: a one-image record batched with a two-image one (padded, masked) gets the
    logits it gets alone; the second image's place embedding lets the model tell left from right."""
    bundle = vl_bart.load(ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(TINY, TEXTS, tmp_path)))
    model = bundle.model.eval()
    single = batch(bundle.tokenizer)
    pixels = torch.stack([torch.stack([single["pixel_values"][0], torch.zeros(3, 64, 64)]),
                          torch.randn(2, 3, 64, 64)])
    pair = {"input_ids": single["input_ids"].repeat(2, 1), "attention_mask": single["attention_mask"].repeat(2, 1),
            "labels": single["labels"].repeat(2, 1), "pixel_values": pixels,
            "image_mask": torch.tensor([[1, 0], [1, 1]])}
    alone = model(**single).logits
    torch.testing.assert_close(model(**pair).logits[:1], alone, rtol=1e-5, atol=1e-5)
    # the same image in the second place instead of the first: its tokens shift by the place embeddings
    embeds, _ = model.encoder_inputs(pair["input_ids"], pair["attention_mask"], pixels, pair["image_mask"])
    swapped, _ = model.encoder_inputs(pair["input_ids"], pair["attention_mask"], pixels.flip(1), pair["image_mask"])
    cells = 4
    place = model.projector.image_index.weight
    torch.testing.assert_close(embeds[1, cells:2 * cells] - swapped[1, :cells],
                               (place[1] - place[0]).expand(cells, -1), rtol=1e-5, atol=1e-5)


def test_records_of_several_files_and_tasks_mix_in_one_dataset(tmp_path, shapes_data):
    from vlft.data.seq2seq import QuestionAnswerDataset, Seq2SeqCollator

    bundle = vl_bart.load(ModelConfig(family="vl_bart"), str(vl_bart.build_tiny(TINY, TEXTS, tmp_path / "m")))
    records = json.loads(shapes_data["train"].read_text())[:2]
    image = records[0]["image"]
    pair = {"id": "pair", "task": "nlvr2", "image": [image, records[1]["image"]],
            "conversations": [{"from": "human", "value": "<image>\n<image>\nboth are red"},
                              {"from": "gpt", "value": "false"}]}
    second = tmp_path / "nlvr2.jsonl"
    second.write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "id": "bad", "image": [image, "gone.png"]}))
    dataset = QuestionAnswerDataset([str(shapes_data["train"]), str(second)], bundle,
                                    str(shapes_data["images"]), max_length=32, on_error="skip")
    assert dataset.skips.counts() == {"missing_image": 1}
    assert f"{second} line 2 (id bad)" in str(dataset.skips.records["missing_image"])
    examples = [dataset[i] for i in range(len(dataset))]
    assert [len(e["pixel_values"]) for e in examples].count(2) == 1
    nlvr = next(e for e in examples if len(e["pixel_values"]) == 2)
    assert bundle.tokenizer.decode(nlvr["input_ids"][1:3]) == "nlvr :"
    collated = Seq2SeqCollator(bundle.tokenizer.pad_token_id)([examples[0], nlvr])
    assert collated["pixel_values"].shape[:2] == (2, 2) and collated["image_mask"].tolist() == [[1, 0], [1, 1]]


def test_pre_extracted_features_give_the_logits_of_the_vision_tower(tmp_path, shapes_data):
    """data_prep/extract_clip_features.py on a run's config, then training examples read from the store:
    the same logits as from the images; a store that misses an image is named; vision must be frozen."""
    import subprocess
    import sys

    import yaml

    from vlft.data.seq2seq import QuestionAnswerDataset, Seq2SeqCollator
    from vlft.models import vl_bart as family
    from vlft.models.tiny import model_path
    from vlft.train.preflight import check_paths

    cfg_dict = tiny_config_dict(shapes_data, tmp_path / "run")
    cfg_dict["model"] = {"family": "vl_bart", "name_or_path": "tiny", "tiny": vars(TINY)}
    cfg_dict["adapters"]["vision"] = "frozen"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg_dict))
    features = tmp_path / "features"
    script = Path(__file__).resolve().parents[2] / "data_prep" / "extract_clip_features.py"
    subprocess.run([sys.executable, str(script), str(config_path), "--out", str(features),
                    "--dtype", "float32", "--batch-size", "5", "--shard-size", "4"], check=True, capture_output=True)
    assert len(list(features.glob("features-*.safetensors"))) == 3  # 12 images, 4 per shard

    cfg = config_from_dict({**cfg_dict, "data": {**cfg_dict["data"], "features": str(features)}})
    check_paths(cfg)
    bundle = family.load_for_run(cfg, model_path(cfg, family))
    from_store = family.train_dataset(cfg, bundle)
    from_images = QuestionAnswerDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length)
    collate = Seq2SeqCollator(bundle.tokenizer.pad_token_id)
    stored, pixels = collate([from_store[0], from_store[3]]), collate([from_images[0], from_images[3]])
    assert stored["visual_features"].shape == (2, 1, 4, TINY.vision_hidden_size // 4 * 32)
    model = bundle.model.eval()
    torch.testing.assert_close(model(**stored).logits, model(**pixels).logits, rtol=1e-5, atol=1e-5)

    index = json.loads((features / "index.json").read_text())
    index.pop("0.png")
    (features / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"record 0 \(id train-0\): no pre-extracted features for image 0.png"):
        family.train_dataset(cfg, bundle)
    cfg.adapters.vision = "dora"
    with pytest.raises(ConfigError, match="pre-extracted features stand for a frozen vision tower"):
        check_paths(cfg)


def test_dry_run_of_a_tiny_vl_bart_and_a_named_vit(tmp_path, shapes_data, capsys):
    """--dry-run builds a tiny model of any family from its config and prints each tower's trainable share;
    a named model of a family without an offline architecture is refused with a message, not a traceback."""
    import yaml

    from vlft.cli import main

    cfg_dict = tiny_config_dict(shapes_data, tmp_path / "run")
    cfg_dict["model"] = {"family": "vl_bart", "name_or_path": "tiny", "tiny": vars(TINY)}
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(cfg_dict))
    assert main(["train", str(config_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (
        ["language"], ["vision"], ["projector"], ["total"])}
    assert rows["vision"][1] == "dora" and rows["projector"][1] == "full"
    assert rows["projector"][2] == rows["projector"][3]  # a fully trained tower: every parameter trainable
    total, trainable = (int(rows["total"][i].replace(",", "")) for i in (1, 2))
    assert 0 < trainable < total and f"trainable: {trainable:,} of {total:,}" in out
    assert not (tmp_path / "run").exists()  # nothing written to the run directory

    named_vit = {"family": "vit", "name_or_path": "vit_base_patch16_224"}
    config_path.write_text(yaml.safe_dump({**cfg_dict, "model": named_vit}))
    assert main(["train", str(config_path), "--dry-run"]) == 2
    assert "--dry-run of a named vit model is not supported" in capsys.readouterr().err
