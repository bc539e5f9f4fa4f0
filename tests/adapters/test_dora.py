"""vlft's DoRA forward against peft's: same outputs, same gradients, same merge, same adapter files."""

import copy
import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vlft.adapters.dora import use_vlft_dora

# bf16 keeps 8 mantissa bits (eps 2^-8 ≈ 3.9e-3). peft takes the row norm in bf16, vlft in fp32, and a
# gradient sums many bf16-rounded products: each is ~1.4% (worst element, relative to the largest) away
# from an fp32 computation, in different directions, so the two may differ by up to 2^-5 ≈ 3.1%.
# test_bf16_is_at_least_as_close_to_fp32_as_peft checks the direction of the difference.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2**-5}
# VLFT_TEST_DEVICE=cuda runs every check here on a GPU (models and tensors are made there).
DEVICE = os.environ.get("VLFT_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def on_test_device():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"VLFT_TEST_DEVICE={DEVICE} but torch sees no CUDA device")
    # TF32 convolutions (cuDNN's default) round inputs to 10 mantissa bits: fp32 parity would then measure
    # cuDNN's choice of algorithm for each path, not the DoRA arithmetic
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with torch.device(DEVICE):
        yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


class Layers(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.lin = nn.Linear(64, 128, bias=bias)
        self.conv = nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1, bias=bias)
        self.patch = nn.Conv2d(3, 32, kernel_size=4, stride=4, bias=bias)  # a ViT patch embedding

    def forward(self, x, image):
        return self.lin(x), self.conv(image), self.patch(image)


def peft_model(bias=True, dropout=0.0, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=True,
                        target_modules=["lin", "conv", "patch"])
    model = get_peft_model(Layers(bias), config)
    with torch.no_grad():  # move away from init (B = 0) so that every term of the norm matters
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model.to(dtype)


def run(model, dtype, train: bool, input_dtype=None):
    model.train(train)
    torch.manual_seed(1)
    x, image = torch.randn(2, 3, 64), torch.randn(2, 3, 16, 16)  # x: (batch, tokens, features)
    x, image = (t.to(input_dtype or dtype).to(dtype) for t in (x, image))
    torch.manual_seed(2)  # same dropout masks for both implementations
    outputs = model(x, image)
    sum(o.float().pow(2).mean() for o in outputs).backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    return [o.float() for o in outputs], grads


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_peft(dtype, dropout, train, bias):
    reference = peft_model(bias, dropout, dtype)
    fast = copy.deepcopy(reference)
    assert use_vlft_dora(fast) == 3
    want_out, want_grad = run(reference, dtype, train)
    got_out, got_grad = run(fast, dtype, train)
    # without dropout, the Linear takes the one-Function path; with it, peft's second matmul is kept
    if dtype == torch.float32:  # (bf16 outputs come back through a cast)
        assert (type(got_out[0].grad_fn).__name__ == "_DoraLinearBackward") == (dropout == 0 or not train)
    for got, want in zip(got_out, want_out, strict=True):
        assert rel_err(got, want) <= TOLERANCE[dtype]
    assert any("lora_magnitude_vector" in n for n in want_grad) and any("lora_A" in n for n in want_grad)
    for name, want in want_grad.items():
        assert rel_err(got_grad[name], want) <= TOLERANCE[dtype], name


def worst_error(result, truth) -> float:
    (outs, grads), (true_outs, true_grads) = result, truth
    return max([rel_err(o, t) for o, t in zip(outs, true_outs, strict=True)] +
               [rel_err(grads[k], true_grads[k]) for k in true_grads])


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_is_at_least_as_close_to_fp32_as_peft(bias, train):
    peft_bf16 = peft_model(bias, 0.0, torch.bfloat16)
    vlft_bf16 = copy.deepcopy(peft_bf16)
    use_vlft_dora(vlft_bf16)
    truth = run(copy.deepcopy(peft_bf16).float(), torch.float32, train, input_dtype=torch.bfloat16)
    peft_error = worst_error(run(peft_bf16, torch.bfloat16, train), truth)
    vlft_error = worst_error(run(vlft_bf16, torch.bfloat16, train), truth)
    assert vlft_error <= 1.25 * peft_error, (vlft_error, peft_error)


def test_merge_and_unmerge_give_peft_weights_and_refresh_the_norm_cache():
    reference = peft_model()
    fast = copy.deepcopy(reference)
    use_vlft_dora(fast)
    x, image = torch.randn(6, 64), torch.randn(2, 3, 16, 16)
    before = [o.detach() for o in fast.eval()(x, image)]
    reference.merge_adapter()
    fast.merge_adapter()
    for name, param in reference.named_parameters():
        if "base_layer.weight" in name:
            torch.testing.assert_close(dict(fast.named_parameters())[name], param, rtol=0, atol=0)
    fast.unmerge_adapter()
    after = fast(x, image)  # the cached ||W||² must follow W through merge and unmerge
    for got, want in zip(after, before, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cache_follows_an_in_place_weight_change():
    model = peft_model()
    use_vlft_dora(model)
    reference = copy.deepcopy(model)
    x, image = torch.randn(6, 64), torch.randn(2, 3, 16, 16)
    model.eval()(x, image)  # fills the cache
    with torch.no_grad():
        for m in (model, reference):
            m.base_model.model.lin.base_layer.weight.mul_(1.5)
    reference.base_model.model.lin._vlft_weight_sq = None
    torch.testing.assert_close(model(x, image)[0], reference.eval()(x, image)[0])


def test_adapter_saved_from_vlft_dora_loads_in_stock_peft_with_identical_outputs(tmp_path):
    fast = peft_model()
    use_vlft_dora(fast)
    fast.save_pretrained(tmp_path)
    torch.manual_seed(0)
    stock = PeftModel.from_pretrained(Layers(bias=True), tmp_path).eval()
    assert not any(type(v).__name__.startswith("Vlft") for m in stock.modules()
                   for v in getattr(m, "lora_variant", {}).values())
    x, image = torch.randn(6, 64), torch.randn(2, 3, 16, 16)
    for got, want in zip(stock(x, image), fast.eval()(x, image), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class InPlaceAfter(nn.Module):
    """A Linear whose output may be modified in place right away (as an in-place activation would)."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.lin = nn.Linear(16, 24)
        self.in_place = in_place

    def forward(self, x):
        out = self.lin(x)
        return out.mul_(2.0).relu_() if self.in_place else out.relu()


@pytest.mark.parametrize("in_place, zero_magnitude", [(True, False), (False, True), (True, True)])
def test_gradients_survive_an_in_place_op_on_the_output_and_a_zero_magnitude(in_place, zero_magnitude):
    torch.manual_seed(0)
    reference = get_peft_model(InPlaceAfter(in_place),
                               LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["lin"]))
    with torch.no_grad():
        reference.base_model.model.lin.lora_B.default.weight.normal_()
        if zero_magnitude:  # g = 0 on three channels: z cannot be divided back out of the output
            reference.base_model.model.lin.lora_magnitude_vector.default.weight[:3] = 0.0
    fast = copy.deepcopy(reference)
    use_vlft_dora(fast)
    x = torch.randn(5, 16)
    grads = []
    for model in (reference, fast):
        model(x).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, rtol=1e-5, atol=1e-6)
