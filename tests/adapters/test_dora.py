"""vlft's DoRA against peft's: outputs and gradients in every dtype setup, merge, and the adapter files."""

import copy
import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vlft.adapters.dora import use_vlft_dora

# VLFT_TEST_DEVICE=cuda runs every check here on a GPU (models and tensors are made there).
DEVICE = os.environ.get("VLFT_TEST_DEVICE", "cpu")
# How the model runs: parameter dtype, adapter dtype, autocast dtype.
MODES = {
    "fp32": (torch.float32, torch.float32, None),
    "bf16": (torch.bfloat16, torch.bfloat16, None),
    "bf16-autocast": (torch.float32, torch.float32, torch.bfloat16),
    "fp16-autocast": (torch.float32, torch.float32, torch.float16),
    "bf16-base": (torch.bfloat16, torch.float32, None),  # what peft gives a bf16 model: fp32 adapters
}
# Errors are measured against the same model in float64 (fed the same rounded inputs and dropout masks), as the
# RMS of the difference over the RMS of the truth, the worst over the three outputs and every gradient. vlft may
# round at other points than peft, not more often: it must be within 1.5x of peft's error, or within half an
# ulp of the lowest precision involved (fp32 2^-24 ~ 6e-8 per op, a few ops: 1e-6; bf16 2^-9; fp16 2^-12).
FLOOR = {"fp32": 1e-6, "bf16": 2**-9, "bf16-autocast": 2**-9, "fp16-autocast": 2**-12, "bf16-base": 2**-9}
# Where peft cannot run (its Conv2d DoRA applies the bf16 kernel to the fp32 dropout output), vlft's error is
# bounded by bf16's: a few roundings of 2^-9 each.
BOUND_WITHOUT_PEFT = 2**-7


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


def dora_model(model: nn.Module, mode: str, targets=("lin", "conv", "patch"), **config) -> nn.Module:
    """peft's DoRA on ``model`` made in the mode's dtypes as peft makes them: the base cast first, then the
    adapters (on a bf16 base peft keeps them fp32 unless told otherwise)."""
    base_dtype, adapter_dtype, _ = MODES[mode]
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=list(targets), **config)
    return get_peft_model(model.to(base_dtype), config, autocast_adapter_dtype=adapter_dtype != base_dtype)


def peft_model(bias=True, dropout=0.0, mode="fp32", seed=0):
    torch.manual_seed(seed)
    model = dora_model(Layers(bias), mode, lora_dropout=dropout)
    with torch.no_grad():  # move away from init (B = 0) so that every term of the norm matters
        for name, param in model.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def run(model, mode, train: bool, input_dtype=None, retain_graph=False):
    """Outputs and parameter gradients (float64) of one forward and backward on fixed inputs."""
    base_dtype, _, autocast = MODES.get(mode, (torch.float64, None, None))
    model.train(train)
    torch.manual_seed(1)
    x, image = torch.randn(4, 16, 64), torch.randn(4, 3, 16, 16)  # x: (batch, tokens, features)
    x, image = (t.to(input_dtype or base_dtype).to(base_dtype) for t in (x, image))
    torch.manual_seed(2)  # the same dropout masks for every implementation and dtype
    with torch.autocast(torch.device(DEVICE).type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        outputs = model(x, image)
    sum(o.double().pow(2).mean() for o in outputs).backward(retain_graph=retain_graph)
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.requires_grad}
    return [o.double() for o in outputs], grads


def rms_error(result, truth) -> float:
    def err(got, want):
        return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    (outs, grads), (true_outs, true_grads) = result, truth
    errors = [err(o, t) for o, t in zip(outs, true_outs, strict=True)]
    return max(errors + [err(grads[k], true_grads[k]) for k in true_grads])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("mode", MODES)
def test_outputs_and_gradients_as_close_to_float64_as_peft(mode, dropout, train, bias):
    reference = peft_model(bias, dropout, mode)
    fast = copy.deepcopy(reference)
    assert use_vlft_dora(fast) == 3
    truth = run(copy.deepcopy(reference).double(), "float64", train, input_dtype=MODES[mode][0])
    got = run(fast, mode, train)
    if mode == "fp32":  # the Linear is one autograd Function, with and without dropout
        assert type(got[0][0].grad_fn.next_functions[0][0]).__name__ == "DoraLinearFnBackward"
    vlft_error = rms_error(got, truth)
    try:
        peft_error = rms_error(run(reference, mode, train), truth)
    except RuntimeError:
        assert mode == "bf16-base" and dropout > 0 and train  # peft's Conv2d DoRA does not cast W
        assert vlft_error <= BOUND_WITHOUT_PEFT
        return
    assert vlft_error <= max(1.5 * peft_error, FLOOR[mode]), (vlft_error, peft_error)


@pytest.mark.parametrize("mode", ["fp32", "bf16-base", "bf16-autocast"])
def test_dora_at_init_is_the_base_layer(mode):
    """B = 0 and m = ||W||: the output is the base layer's. The fp32 norm keeps g = 1 to fp32 precision, so a bf16
    output is bit for bit the base layer's."""
    torch.manual_seed(0)
    model = dora_model(Layers(bias=True), mode)
    base_dtype, _, autocast = MODES[mode]
    use_vlft_dora(model)
    with torch.no_grad():  # peft takes m on a bf16 base in bf16 (2^-9 off) before making it fp32: take it exactly
        for name in ("lin", "conv", "patch"):
            layer = getattr(model.base_model.model, name)
            weight = layer.get_base_layer().weight.float()
            magnitude = layer.lora_magnitude_vector["default"].weight
            magnitude.copy_(torch.linalg.vector_norm(weight.flatten(1), dim=1).view_as(magnitude))
    x, image = torch.randn(4, 16, 64, dtype=base_dtype), torch.randn(4, 3, 16, 16, dtype=base_dtype)
    with torch.autocast(torch.device(DEVICE).type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        got = model(x, image)
        with model.disable_adapter():
            want = model(x, image)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.to(w.dtype), w, rtol=1e-6 if w.dtype == torch.float32 else 0, atol=1e-6)


def test_merge_and_unmerge_give_peft_weights():
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
    for got, want in zip(fast(x, image), before, strict=True):  # the norm follows W through merge and unmerge
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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
        if zero_magnitude:  # g = 0 on three channels: their output carries nothing of the pre-scaling value
            reference.base_model.model.lin.lora_magnitude_vector.default.weight[:3] = 0.0
    fast = copy.deepcopy(reference)
    use_vlft_dora(fast)
    x = torch.randn(5, 16)
    grads = []
    for model in (reference, fast):
        model(x).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, want in grads[0].items():
        # fp32, summed in another order: within a few ulps of the largest element
        torch.testing.assert_close(grads[1][name], want, rtol=0, atol=1e-6 * want.abs().max().item())
        if zero_magnitude and "magnitude" in name:
            assert want[:3].abs().min() > 0  # the zero channels' gradients are there to get right


@pytest.mark.parametrize("status", ["NOT_AVAILABLE", "AVAILABLE"])
def test_the_norm_gathers_a_zero3_partitioned_weight_only_when_it_is_not_held(monkeypatch, status):
    from contextlib import contextmanager
    from types import SimpleNamespace

    from vlft.adapters import dora

    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(8, 6)), LoraConfig(r=2, lora_alpha=4, use_dora=True,
                                                                        target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    want = dora.layer_inv_norm(layer, "default")
    gathered = []

    @contextmanager
    def fake_gather(param, modifier_rank):
        gathered.append((param, modifier_rank))
        yield

    monkeypatch.setattr(dora, "gather_params_ctx", fake_gather)
    layer.base_layer.weight.ds_status = SimpleNamespace(name=status)
    torch.testing.assert_close(dora.layer_inv_norm(layer, "default"), want, rtol=0, atol=0)
    # gathered read-only (no rank writes back), and only when ZeRO-3 does not hold it already
    assert gathered == ([(layer.base_layer.weight, None)] if status == "NOT_AVAILABLE" else [])


def test_an_empty_batch_gives_what_peft_gives():
    # no tokens at all (an empty shard of a last batch): the backward's batch-norm kernel would divide by zero
    reference = peft_model()
    fast = copy.deepcopy(reference)
    use_vlft_dora(fast)
    results = []
    for model in (reference, fast):
        outputs = model(torch.randn(0, 16, 64), torch.randn(0, 3, 16, 16))
        sum(o.sum() for o in outputs).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append(([o.shape for o in outputs], grads))
    assert results[1][0] == results[0][0]
    for name, want in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["tokens", "nchw", "channels-last-memory", "bf16-y"])
def test_the_backward_scales_the_gradient_and_sums_it_against_y_per_channel(dtype, layout):
    """The backward's one-op ``(grad ⊙ scale, Σ grad ⊙ y)`` against the products and sums written out."""
    from vlft.adapters._dora_autograd import _scale_and_token_sum

    torch.manual_seed(0)
    shape, channel_dim = ((4, 16, 32), -1) if layout in ("tokens", "bf16-y") else ((2, 32, 5, 5), 1)
    grad, y = torch.randn(shape).to(dtype), torch.randn(shape).to(torch.bfloat16 if layout == "bf16-y" else dtype)
    if layout == "channels-last-memory":
        grad = grad.contiguous(memory_format=torch.channels_last)
    scale = torch.rand(32) + 0.5
    view = [-1 if d == channel_dim % len(shape) else 1 for d in range(len(shape))]
    scaled, summed = _scale_and_token_sum(grad, y, scale.view(view), channel_dim == -1, True, True)
    # the scaled gradient: one product in fp32 (fp64 for fp64), rounded once to grad's dtype
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    torch.testing.assert_close(scaled, (grad.to(exact) * scale.view(view).to(exact)).to(dtype), rtol=0, atol=0)
    # the sum: fp32 accumulation (fp64 for fp64) of products of the values as given
    dims = [d for d in range(len(shape)) if d != channel_dim % len(shape)]
    want = (grad.double() * y.double()).sum(dims)
    assert summed.dtype == exact
    torch.testing.assert_close(summed.double(), want, rtol=1e-12 if exact == torch.float64 else 1e-5, atol=1e-5)
    assert _scale_and_token_sum(grad, y, scale, channel_dim == -1, False, False) == (None, None)
