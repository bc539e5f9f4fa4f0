"""DoRA on a 4-bit (NF4) or 8-bit (LLM.int8) base through bitsandbytes, as `model.quantization` loads it: the
norm comes from the dequantized weight, and outputs and gradients are peft's DoRA's on the same layers."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import LoraLayer

from vlft.adapters import apply_adapters
from vlft.adapters.dora import layer_inv_norm
from vlft.config import AdaptersConfig, ModelConfig, QuantizationConfig, TinyModelConfig
from vlft.models.llava import build_tiny, load


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot quantize and multiply here, or None when it can."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to("cuda" if torch.cuda.is_available() else "cpu")
        layer(torch.randn(2, 64, device=layer.weight.device))
    except Exception as err:  # an import error, a missing CPU backend, a driver problem: all mean "cannot run"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


PROBLEM = bitsandbytes_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"bitsandbytes cannot run here ({PROBLEM})")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    tiny = TinyModelConfig(image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=1, text_hidden_size=64,
                           text_layers=1, num_heads=2)
    return str(build_tiny(tiny, ["what shape is this ? circle rectangle"], tmp_path_factory.mktemp("tiny-llava-q")))


def quantized_dora(path: str, bits: int, impl: str, dropout: float):
    bundle = load(ModelConfig(quantization=QuantizationConfig(bits=bits)), path)
    adapters = AdaptersConfig(language="dora", vision="frozen", projector="frozen", r=4, alpha=8, dropout=dropout,
                              dora_impl=impl)
    torch.manual_seed(0)  # lora_A's random init
    model = apply_adapters(bundle.model, bundle.towers, adapters).train()
    with torch.no_grad():  # away from init (B = 0), the same for both implementations
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model, bundle


def is_quantized(layer: LoraLayer) -> bool:
    return type(layer.get_base_layer()).__name__ in ("Linear4bit", "Linear8bitLt")


def step(model, bundle) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    text = torch.randint(3, len(bundle.tokenizer), (2, 10))
    text[text == bundle.image_token_id] = 3
    ids = torch.cat([torch.full((2, bundle.num_image_tokens), bundle.image_token_id), text], dim=1)
    torch.manual_seed(2)  # the same dropout masks
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def rms(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).double().pow(2).mean().sqrt() / want.double().pow(2).mean().sqrt()).item()


# fp32 arithmetic on both sides over the same dequantized weights (with dropout both apply the dequantized W
# to the dropped-out input as a dense matmul): they differ in the order of float sums only.
TOLERANCE = 1e-5


@pytest.mark.parametrize("bits, dropout", [(4, 0.0), (4, 0.1), (8, 0.0), (8, 0.1)])
def test_dora_on_a_quantized_base_matches_peft(tiny_llava, bits, dropout):
    reference, bundle = quantized_dora(tiny_llava, bits, "peft", dropout)
    fast, _ = quantized_dora(tiny_llava, bits, "vlft", dropout)
    quantized = [m for m in fast.modules() if isinstance(m, LoraLayer) and is_quantized(m)]
    assert quantized and all(type(v).__name__ == "VlftDoraLinearVariant" for m in quantized
                             for v in m.lora_variant.values())
    (want_logits, want), (got_logits, got) = step(reference, bundle), step(fast, bundle)
    assert rms(got_logits, want_logits) <= TOLERANCE
    assert got.keys() == want.keys() and any("lora_magnitude_vector" in n for n in got)
    for name in want:
        assert rms(got[name], want[name]) <= TOLERANCE, name


@pytest.mark.parametrize("bits", [4, 8])
def test_the_norm_comes_from_the_dequantized_weight(tiny_llava, bits):
    from peft.utils.integrations import dequantize_module_weight

    model, _ = quantized_dora(tiny_llava, bits, "vlft", 0.0)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer) and is_quantized(m))
    weight = dequantize_module_weight(layer.get_base_layer()).float()
    lora = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    want = torch.linalg.vector_norm(weight + layer.scaling["default"] * lora, dim=1).reciprocal()
    torch.testing.assert_close(layer_inv_norm(layer, "default"), want, rtol=1e-5, atol=0)
    assert layer.get_base_layer().weight.dtype in (torch.uint8, torch.int8)  # storage that is not W itself
