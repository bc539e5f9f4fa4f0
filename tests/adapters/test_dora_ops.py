"""The work of one DoRA training step, counted with torch.profiler on the CPU: the tiny LLaVA with DoRA on the
language model and the vision tower (its Conv2d patch embedding included), adapters as vlft applies them."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from vlft.adapters import apply_adapters
from vlft.adapters.dora import use_vlft_dora
from vlft.config import AdaptersConfig, ModelConfig, TinyModelConfig
from vlft.models.llava import build_tiny, load

# How the model runs: the dtype it is loaded in, and the autocast dtype.
MODES = {"fp32": ("float32", None), "bf16-autocast": ("float32", torch.bfloat16),
         "fp16-autocast": ("float32", torch.float16), "bf16-base": ("bfloat16", None)}
SYNCS = ("aten::_local_scalar_dense", "aten::item")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny-llava-ops")
    tiny = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=32,
                           text_layers=1, num_heads=2)
    return str(build_tiny(tiny, ["what shape is this ? circle rectangle"], out))


def profile_step(path: str, method: str, impl: str, mode: str, dropout: float, shapes: bool = False):
    """(profiler events of one forward and backward after a warm-up one, number of adapted layers)."""
    dtype, autocast = MODES[mode]
    bundle = load(ModelConfig(dtype=dtype), path)
    adapters = AdaptersConfig(language=method, vision=method, projector="full", r=4, alpha=8, dropout=dropout,
                              dora_impl=impl)
    model = apply_adapters(bundle.model, bundle.towers, adapters).train()
    layers = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))
    torch.manual_seed(0)
    text = torch.randint(3, len(bundle.tokenizer), (2, 12))
    text[text == bundle.image_token_id] = 3
    images = torch.full((2, bundle.num_image_tokens), bundle.image_token_id)
    ids = torch.cat([text[:, :2], images, text[:, 2:]], dim=1)
    pixels = torch.randn(2, 3, 32, 32, dtype=getattr(torch, dtype))

    def step():
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
        loss.backward()

    step()
    with torch.profiler.profile(record_shapes=shapes) as prof:
        step()
    return [e for e in prof.events() if e.name.startswith("aten::")], layers


CASES = [("fp32", 0.0), ("fp32", 0.1), ("bf16-autocast", 0.0), ("bf16-autocast", 0.1), ("fp16-autocast", 0.0),
         ("bf16-base", 0.0), ("bf16-base", 0.1)]


@pytest.mark.parametrize("mode, dropout", CASES)
def test_dora_adds_no_host_sync_and_no_more_aten_ops_per_layer_than_peft(tiny_llava, mode, dropout):
    lora, _ = profile_step(tiny_llava, "lora", "vlft", mode, dropout)
    vlft, layers = profile_step(tiny_llava, "dora", "vlft", mode, dropout)
    assert layers >= 10  # the CLIP and Llama projections, and the patch embedding
    # the model's own host syncs (transformers checks the image tokens against the features) are LoRA's too
    assert [e.name for e in vlft if e.name in SYNCS] == [e.name for e in lora if e.name in SYNCS]
    vlft_per_layer = (len(vlft) - len(lora)) / layers
    try:
        peft, _ = profile_step(tiny_llava, "dora", "peft", mode, dropout)
    except RuntimeError:
        assert mode == "bf16-base" and dropout > 0  # peft's Conv2d DoRA does not cast W to the input's dtype
        return
    peft_per_layer = (len(peft) - len(lora)) / layers
    print(f"{mode} dropout {dropout}: aten ops per DoRA layer beyond LoRA's: vlft {vlft_per_layer:.1f}, "
          f"peft {peft_per_layer:.1f} ({layers} layers)")
    assert vlft_per_layer <= peft_per_layer


def test_no_fp32_copy_of_a_bf16_weight(tiny_llava):
    """On a bf16 base with fp32 adapters peft casts every W to fp32 in every forward; vlft reads W in bf16. (The
    CPU's own reduction kernel stages a low-precision input in fp32 blocks; CUDA's reads bf16 directly.)"""
    weights = {(32, 32), (128, 32), (32, 128), (32, 3, 8, 8)}

    def fp32_weight_copies(events):
        found = []
        for event in events:
            parent = event.cpu_parent
            if event.name != "aten::_to_copy" or tuple(event.input_shapes[0]) not in {tuple(w) for w in weights}:
                continue
            while parent is not None and parent.name != "aten::linalg_vector_norm":
                parent = parent.cpu_parent
            if parent is None:
                found.append(tuple(event.input_shapes[0]))
        return found

    peft, _ = profile_step(tiny_llava, "dora", "peft", "bf16-base", 0.0, shapes=True)
    vlft, _ = profile_step(tiny_llava, "dora", "vlft", "bf16-base", 0.0, shapes=True)
    assert fp32_weight_copies(peft)  # what the check would see
    assert fp32_weight_copies(vlft) == []


def conv_step_ops(impl: str, autocast: torch.dtype | None, dropout: float) -> int:
    """aten ops of one forward and backward of a lone DoRA Conv2d (a ViT patch embedding in miniature)."""
    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Conv2d(3, 16, kernel_size=4, stride=4)),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0"], use_dora=True))
    if impl == "vlft":
        use_vlft_dora(model)
    images = torch.randn(2, 3, 16, 16)

    def step():
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = model(images)
        out.float().pow(2).mean().backward()

    step()
    with torch.profiler.profile() as prof:
        step()
    return sum(e.name.startswith("aten::") for e in prof.events())


@pytest.mark.parametrize("autocast, dropout", [(None, 0.0), (None, 0.1), (torch.bfloat16, 0.0)])
def test_a_conv2d_dora_layer_runs_no_more_aten_ops_than_peft(autocast, dropout):
    vlft, peft = conv_step_ops("vlft", autocast, dropout), conv_step_ops("peft", autocast, dropout)
    print(f"Conv2d DoRA, autocast {autocast}, dropout {dropout}: aten ops vlft {vlft}, peft {peft}")
    assert vlft <= peft
