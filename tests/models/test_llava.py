import json
import subprocess
import sys

import pytest
import torch

from vlft.config import ModelConfig, TinyModelConfig
from vlft.models import ModelLoadError
from vlft.models.llava import architecture_config, build_tiny, load, num_image_tokens

TINY = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=32,
                       text_layers=1, num_heads=2)


def test_tiny_model_round_trips_through_the_same_loader_as_a_hub_checkpoint(tmp_path):
    path = build_tiny(TINY, ["what shape is it ?", "circle", "square"], tmp_path / "tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= {
        p.name for p in path.iterdir()}
    bundle = load(ModelConfig(), str(path))
    assert bundle.num_image_tokens == (32 // 8) ** 2 == 16
    tok = bundle.tokenizer
    assert tok.convert_tokens_to_ids("circle") != tok.unk_token_id
    assert bundle.image_token_id == tok.convert_tokens_to_ids("<image>")
    ids = [tok.bos_token_id] + [bundle.image_token_id] * 16 + tok("what shape", add_special_tokens=False)["input_ids"]
    pixels = bundle.image_processor(torch.zeros(3, 40, 40), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    logits = bundle.model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
    assert logits.shape == (1, len(ids), len(tok))
    again = load(ModelConfig(), str(path)).model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
    torch.testing.assert_close(logits, again)


def test_unreachable_checkpoint_gives_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError, match=r"cannot load LLaVA checkpoint '.*no-such-model'"):
        load(ModelConfig(), str(tmp_path / "no-such-model"))


def test_7b_architecture_ships_and_counts_like_llava_1_5():
    config = architecture_config("llava-hf/llava-1.5-7b-hf")
    assert num_image_tokens(config) == 576
    assert config.text_config.hidden_size == 4096 and config.vision_config.image_size == 336


@pytest.mark.integration
def test_dry_run_of_the_7b_recipe_prints_the_trainable_share():
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "scripts/train.py", "configs/llava_dora.yaml", "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # DoRA r=128 on q,k,v,o,gate,up,down of 32 Llama-7B layers: A and B, plus one magnitude per output row
    per_layer = 128 * (4 * (4096 + 4096) + 3 * (4096 + 11008)) + 4 * 4096 + 2 * 11008 + 4096
    projector = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    expected = 32 * per_layer + projector
    assert f"{expected:,}" in out.stdout
    assert "trainable:" in out.stdout and "%" in out.stdout
    json.dumps(out.stdout)  # printable


def test_generation_from_precomputed_embeddings_equals_generation_from_pixels(tmp_path, shapes_data):
    """Evaluation runs the vision tower itself (the same place on every rank) and gives generate the prompt's
    embeddings: the answers are token for token those of transformers' own pixel_values path."""
    from vlft.data.dataset import PromptDataset, VisionTextCollator
    from vlft.models.llava_steps import generation_inputs

    texts = [t["value"] for r in json.loads(shapes_data["train"].read_text()) for t in r["conversations"]]
    bundle = load(ModelConfig(), str(build_tiny(TINY, texts, tmp_path / "tiny")))
    records = json.loads(shapes_data["test"].read_text())[:3]
    records.append({"id": "text", "conversations": [{"from": "human", "value": "what color is the shape?"},
                                                    {"from": "gpt", "value": "red"}]})
    (tmp_path / "eval.json").write_text(json.dumps(records))
    dataset = PromptDataset(tmp_path / "eval.json", bundle, str(shapes_data["images"]), log=lambda m: None)
    batch = VisionTextCollator(bundle.tokenizer.pad_token_id, for_generation=True)([dataset[i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    model, kwargs = bundle.model.eval(), {"max_new_tokens": 5, "do_sample": False,
                                          "pad_token_id": bundle.tokenizer.pad_token_id}
    torch.manual_seed(0)
    for module in model.modules():  # a trained-looking model: random weights answer differently per prompt
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.3)
    from_pixels = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1]:]
    from_embeddings = model.generate(**generation_inputs(model, bundle.extra["visual"], inputs), **kwargs)
    assert torch.equal(from_pixels, from_embeddings)
    assert len({tuple(row.tolist()) for row in from_pixels}) > 1
