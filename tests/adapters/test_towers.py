import pytest
from torch import nn

from vlft.adapters import apply_adapters, count_parameters, resolve_tower_targets
from vlft.config import AdaptersConfig
from vlft.models.llava import TOWERS


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from vlft.config import ModelConfig, TinyModelConfig
    from vlft.models.llava import build_tiny, load

    path = build_tiny(TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1,
                                      text_hidden_size=32, text_layers=1, num_heads=2),
                      ["what is it ?", "circle"], tmp_path_factory.mktemp("tiny"))
    return lambda: load(ModelConfig(), str(path)).model


def test_vision_tower_resolves_linear_and_the_conv2d_patch_embedding(tiny_llava):
    model = tiny_llava()
    cfg = AdaptersConfig(language="frozen", vision="dora", projector="frozen")
    targets = resolve_tower_targets(model, TOWERS, cfg)
    assert "model.vision_tower.embeddings.patch_embedding" in targets.adapted
    assert isinstance(model.get_submodule("model.vision_tower.embeddings.patch_embedding"), nn.Conv2d)
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj" in targets.adapted
    assert all(n.startswith("model.vision_tower.") for n in targets.adapted)
    assert targets.method == "dora" and targets.full == []


def test_language_tower_excludes_lm_head_and_projector(tiny_llava):
    targets = resolve_tower_targets(tiny_llava(), TOWERS, AdaptersConfig(language="lora", vision="frozen",
                                                                         projector="full"))
    assert "lm_head" not in targets.adapted
    assert {n.rsplit(".", 1)[-1] for n in targets.adapted} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"}
    assert targets.full == ["model.multi_modal_projector"] and targets.method == "lora"


def test_mixing_lora_and_dora_is_refused(tiny_llava):
    with pytest.raises(ValueError, match="either lora or dora.*language: dora, vision: lora"):
        resolve_tower_targets(tiny_llava(), TOWERS, AdaptersConfig(language="dora", vision="lora"))


def test_dora_parameter_count_matches_hand_computation(tiny_llava):
    model = apply_adapters(tiny_llava(), TOWERS, AdaptersConfig(language="frozen", vision="dora", projector="frozen",
                                                                r=4))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    conv = {n: p for n, p in trainable.items() if "patch_embedding" in n}
    # Conv2d 3->32, 8x8 kernel: A is r x 3 x 8 x 8, B is 32 x r x 1 x 1, magnitude one per output channel
    assert sum(p.numel() for p in conv.values()) == 4 * 3 * 8 * 8 + 32 * 4 + 32
    expected = 4 * 3 * 64 + 32 * 4 + 32  # the conv
    expected += 4 * (4 * (32 + 32) + 32)  # q, k, v, out_proj
    expected += 4 * (32 + 128) + 128 + 4 * (128 + 32) + 32  # fc1, fc2
    counts = count_parameters(model, TOWERS)
    assert counts["vision"].trainable == expected == counts["total"].trainable
    assert counts["language"].trainable == 0


def test_full_projector_counts_once_and_is_saved_with_the_adapter(tiny_llava, tmp_path):
    base = tiny_llava()
    projector_size = sum(p.numel() for p in base.model.multi_modal_projector.parameters())
    base_total = sum(p.numel() for p in base.parameters())
    model = apply_adapters(base, TOWERS, AdaptersConfig(language="dora", vision="frozen", projector="full"))
    counts = count_parameters(model, TOWERS)
    assert counts["projector"].total == counts["projector"].trainable == projector_size
    adapter_size = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert counts["total"].total == base_total + adapter_size
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert any("multi_modal_projector" in k for k in f.keys())


def test_full_only_run_skips_peft_and_freezes_other_towers(tiny_llava):
    model = apply_adapters(tiny_llava(), TOWERS, AdaptersConfig(language="frozen", vision="full", projector="full"))
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith(("model.vision_tower.", "model.multi_modal_projector."))


def test_regex_escape_hatch(tiny_llava):
    model = apply_adapters(tiny_llava(), TOWERS, AdaptersConfig(language="dora", vision="frozen", projector="frozen",
                                                                target_regex=r".*language_model.*\.(q_proj|v_proj)"))
    wrapped = {n.rsplit(".", 2)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped and all(n.endswith(("q_proj.lora_A", "v_proj.lora_A")) for n in wrapped)


def test_linear_layers_inside_multihead_attention_are_left_out():
    """nn.MultiheadAttention (open_clip's ViT blocks) reads out_proj.weight itself: a wrapper there would
    never run, so the tower adapts the block's other layers and not out_proj."""
    block = nn.Module()
    block.attn = nn.MultiheadAttention(16, 2, batch_first=True)
    block.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    model = nn.Module()
    model.vision = nn.Sequential(nn.Conv2d(3, 16, 4, 4), block)
    targets = resolve_tower_targets(model, {"vision": ("vision",)},
                                    AdaptersConfig(language="frozen", vision="dora", projector="frozen"))
    assert targets.adapted == ["vision.0", "vision.1.mlp.0", "vision.1.mlp.2"]
