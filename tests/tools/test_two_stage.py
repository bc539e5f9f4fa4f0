"""Two-stage training: a run trained in full on one task, merged, is the base checkpoint of later runs on another
task (full, LoRA and DoRA alike), and `vlft analyze` measures those runs against that base."""

import json

import pytest
import torch

from tests.conftest import COLORS, SHAPES, draw, tiny_config_dict
from vlft.analyze import analyze_run, decomposition_change
from vlft.config import ModelConfig, config_from_dict
from vlft.merge import merge_run
from vlft.runs import load_run_config, load_trained, with_adapters_merged

VIT_TINY = {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    """The same drawn images labelled by colour (stage 1) and by shape (stage 2)."""
    root = tmp_path_factory.mktemp("two_stage")
    (root / "images").mkdir()
    colors, shapes = [], []
    for i in range(12):
        shape, color = SHAPES[i % 2], list(COLORS)[i % 3]
        draw(shape, color).save(root / "images" / f"{i}.png")
        colors.append({"id": f"img{i}", "image": f"{i}.png", "label": color})
        shapes.append({"id": f"img{i}", "image": f"{i}.png", "label": shape})
    for name, records in (("color", colors), ("shape", shapes)):
        (root / f"{name}.json").write_text(json.dumps(records))
    return root


def vit_config(files, task: str, name_or_path: str, output_dir, method: str) -> dict:
    return {"model": {"family": "vit", "name_or_path": name_or_path, "tiny": VIT_TINY},
            "adapters": {"language": "frozen", "vision": method, "projector": "frozen", "r": 4, "alpha": 8},
            "data": {"train": str(files / f"{task}.json"), "eval": str(files / f"{task}.json"),
                     "image_folder": str(files / "images")},
            "training": {"output_dir": str(output_dir), "max_steps": 2, "per_device_batch_size": 4, "lr": 1e-2,
                         "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, "seed": 0},
            "eval": {"batch_size": 12}}


@pytest.fixture(scope="module")
def vit_stage1(label_files, tmp_path_factory):
    """Stage 1: the tiny ViT trained in full on colours, merged into a timm checkpoint."""
    from vlft.train.run import train

    root = tmp_path_factory.mktemp("vit_stage1")
    train(config_from_dict(vit_config(label_files, "color", "tiny", root / "run", "full")))
    merge_run(root / "run", root / "base")
    return root


def trained_weight(run_dir, layer: str) -> torch.Tensor:
    """A layer's weight as the run left it, adapters folded in by peft's merge."""
    cfg = load_run_config(run_dir / "config.yaml", ["adapters.dora_impl=peft"])
    model, _ = with_adapters_merged(load_trained(run_dir, cfg).model)
    return model.get_submodule(layer).weight


def vision_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("encoder.")}


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_a_stage1_vit_is_the_base_of_every_method_and_analyze_measures_against_it(vit_stage1, label_files,
                                                                                tmp_path, method):
    from vlft.models import vit
    from vlft.train.run import train

    base_dir = str(vit_stage1 / "base")
    stage1 = vit.load(ModelConfig(family="vit"), base_dir)
    tiny = vit.load(ModelConfig(family="vit"), str(vit_stage1 / "run" / "base_model"))  # what stage 1 started from
    assert stage1.extra["labels"] == sorted(list(COLORS)[:3])

    cfg = config_from_dict(vit_config(label_files, "shape", base_dir, tmp_path / method, method))
    start = vit.load_for_run(cfg, base_dir)
    # the encoder starts from stage 1; the head is new, over the shapes
    for name, weight in vision_weights(stage1.model).items():
        torch.testing.assert_close(dict(start.model.named_parameters())[name], weight, rtol=0, atol=0)
    assert start.extra["labels"] == sorted(SHAPES[:2]) and start.model.head.out_features == 2

    result = train(cfg)
    assert result.metrics["eval"]["eval_num_images"] == 12
    analysis = analyze_run(tmp_path / method)
    layer = "encoder.blocks.0.attn.qkv"
    point = next(p for p in analysis.points if p["layer"] == layer)
    trained = trained_weight(tmp_path / method, layer)
    expected = decomposition_change(stage1.model.get_submodule(layer).weight, trained)
    assert (point["delta_m"], point["delta_d"]) == pytest.approx(expected, rel=1e-6)
    # against the random-init build stage 1 started from, the figures would differ
    from_scratch = decomposition_change(tiny.model.get_submodule(layer).weight, trained)
    assert from_scratch[1] != pytest.approx(expected[1], rel=0.05)


@pytest.fixture(scope="module")
def llava_stage1(shapes_data, tmp_path_factory):
    """Stage 1: the tiny LLaVA trained in full (every tower), merged into a transformers checkpoint."""
    from vlft.train.run import train

    root = tmp_path_factory.mktemp("llava_stage1")
    stage1 = tiny_config_dict(shapes_data, root / "run", max_steps=3, lr=1e-2)
    stage1["adapters"].update(language="full", vision="full", projector="full")
    train(config_from_dict(stage1))
    merge_run(root / "run", root / "base")
    return root


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_a_stage1_llava_is_the_base_of_every_method_and_analyze_measures_against_it(llava_stage1, shapes_data,
                                                                                  tmp_path, method):
    from transformers import LlavaForConditionalGeneration

    from vlft.train.run import train

    stage2 = tiny_config_dict(shapes_data, tmp_path / "stage2", max_steps=2, lr=1e-2)
    stage2["model"]["name_or_path"] = str(llava_stage1 / "base")
    stage2["adapters"].update(language=method, vision=method)
    result = train(config_from_dict(stage2))
    assert "eval_vqa_accuracy" in result.metrics["eval"]

    layer = "model.language_model.layers.0.self_attn.q_proj"
    point = next(p for p in analyze_run(tmp_path / "stage2").points if p["layer"] == layer)
    base = LlavaForConditionalGeneration.from_pretrained(llava_stage1 / "base").get_submodule(layer).weight
    expected = decomposition_change(base, trained_weight(tmp_path / "stage2", layer))
    assert (point["delta_m"], point["delta_d"]) == pytest.approx(expected, rel=1e-6)
    assert point["delta_d"] > 0  # the run moved away from the stage-1 weights it started from
    scratch = LlavaForConditionalGeneration.from_pretrained(llava_stage1 / "run" / "base_model")
    assert not torch.equal(scratch.get_submodule(layer).weight, base)
