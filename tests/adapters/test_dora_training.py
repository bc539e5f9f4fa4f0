"""What training does to a DoRA layer besides one forward and backward: a second backward over the same graph,
activation checkpointing, writes to W behind autograd's back, adapters added later, peft's DoraCaching, and
the scope of the hook that gives layers vlft's variant."""

import copy
import threading

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.helpers import DoraCaching
from peft.tuners.lora.layer import LoraLayer
from torch.utils.checkpoint import checkpoint

from tests.adapters.test_dora import Layers, peft_model, run
from vlft.adapters import dora
from vlft.adapters.dora import use_vlft_dora, vlft_dora_variants


def vlft_variants(model) -> list[str]:
    return sorted(type(v).__name__ for m in model.modules() for v in getattr(m, "lora_variant", {}).values())


def assert_same(got: dict, want: dict, rel: float = 1e-6):
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert (got[name] - value).abs().max() <= rel * value.abs().max(), name


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_a_second_backward_over_the_same_graph_gives_the_same_gradients(autocast, dropout):
    """loss.backward(retain_graph=True) twice: the second pass adds exactly what the first did (no state of the
    layer is consumed in backward), for the Linear and both Conv2d layers, magnitude included."""
    model = peft_model(dropout=dropout)
    use_vlft_dora(model)
    x, image = torch.randn(4, 16, 64), torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = sum(o.float().pow(2).mean() for o in model.train()(x, image))
    loss.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    loss.backward()
    assert_same({n: p.grad - first[n] for n, p in model.named_parameters() if p.requires_grad}, first, rel=0)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_activation_checkpointing_gives_the_gradients_of_a_plain_run(use_reentrant, dropout):
    """Non-reentrant checkpointing unpacks each saved tensor once (a second unpack raises); reentrant reruns the
    forward inside backward. Both must give the plain run's gradients (dropout masks replayed)."""
    reference = peft_model(dropout=dropout)
    use_vlft_dora(reference)
    plain_model = copy.deepcopy(reference)
    _, want = run(plain_model, "fp32", train=True)
    x, image = torch.randn(4, 16, 64, requires_grad=True), torch.randn(4, 3, 16, 16, requires_grad=True)
    for model, checkpointed in ((plain_model, False), (reference, True)):
        model.zero_grad()
        torch.manual_seed(2)
        outputs = checkpoint(model, x, image, use_reentrant=use_reentrant) if checkpointed else model(x, image)
        sum(o.pow(2).mean() for o in outputs).backward()
    assert_same({n: p.grad for n, p in reference.named_parameters() if p.requires_grad},
                {n: p.grad for n, p in plain_model.named_parameters() if p.requires_grad})


@pytest.mark.parametrize("write", ["data.mul_", "data.copy_", "no_grad mul_", "data ="])
def test_outputs_follow_every_kind_of_write_to_W(write):
    """In-place writes through ``.data`` bump neither data_ptr nor _version: a norm cached on those would go
    stale. vlft takes ||W||² from W at every training forward, so it matches peft after any write."""
    reference = peft_model(dropout=0.0)
    fast = copy.deepcopy(reference)
    use_vlft_dora(fast)
    for model in (reference, fast):
        run(model, "fp32", train=True)  # a forward and backward before the write, as in training
        weight = model.base_model.model.lin.base_layer.weight
        new = torch.randn_like(weight)
        with torch.no_grad():
            if write == "data.mul_":
                weight.data.mul_(2)
            elif write == "data.copy_":
                weight.data.copy_(new)
            elif write == "no_grad mul_":
                weight.mul_(0.5)
            else:
                weight.data = new
        model.zero_grad()
    want, got = run(reference, "fp32", train=True), run(fast, "fp32", train=True)
    for g, w in zip(got[0], want[0], strict=True):
        assert (g - w).abs().max() <= 1e-5 * w.abs().max()
    assert_same(got[1], want[1], rel=1e-5)


def test_adapters_added_later_get_vlft_variants_and_match_peft(tmp_path):
    """add_adapter (on layers that have one, and on new ones) and load_adapter resolve vlft's variant on a model
    switched with use_vlft_dora, and nowhere else."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["lin"])
    model = get_peft_model(Layers(bias=True), config)
    use_vlft_dora(model)
    model.add_adapter("more", LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["lin", "conv"]))
    saved = get_peft_model(Layers(bias=True), LoraConfig(r=4, lora_alpha=4, use_dora=True, target_modules=["patch"]))
    saved.save_pretrained(tmp_path)
    model.load_adapter(tmp_path, adapter_name="loaded")
    assert vlft_variants(model) == ["VlftDoraConv2dVariant", "VlftDoraConv2dVariant",
                                    "VlftDoraLinearVariant", "VlftDoraLinearVariant"]
    stock = PeftModel.from_pretrained(Layers(bias=True), tmp_path)
    assert vlft_variants(stock) == ["DoraConv2dVariant"]  # not switched: stock peft
    copied = copy.deepcopy(model)  # the switch follows the model, not the original object
    copied.add_adapter("third", LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=["patch"]))
    assert vlft_variants(copied).count("VlftDoraConv2dVariant") == 3
    # the added adapter computes peft's function
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.more" in name:
                param.normal_()
    reference = copy.deepcopy(model)
    for layer in reference.modules():
        if isinstance(layer, LoraLayer):
            for name, variant in layer.lora_variant.items():
                layer.lora_variant[name] = type(variant).__mro__[1]()  # back to peft's own
    for m in (model, reference):
        m.set_adapter("more")
    x, image = torch.randn(3, 64), torch.randn(2, 3, 16, 16)
    for got, want in zip(model(x, image), reference(x, image), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_hook_is_scoped_to_its_block_and_thread():
    originals = {cls: cls.__dict__["resolve_lora_variant"] for cls in dora._layer_classes()}
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["lin"])
    seen_elsewhere = []

    def elsewhere():  # another thread, while the block is open in this one
        seen_elsewhere.extend(vlft_variants(get_peft_model(Layers(bias=True), config)))

    with vlft_dora_variants():
        inside = get_peft_model(Layers(bias=True), config)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        with vlft_dora_variants():  # nesting keeps it on
            nested = get_peft_model(Layers(bias=True), config)
        after_nested = get_peft_model(Layers(bias=True), config)
    outside = get_peft_model(Layers(bias=True), config)
    assert vlft_variants(inside) == vlft_variants(nested) == vlft_variants(after_nested) == ["VlftDoraLinearVariant"]
    assert seen_elsewhere == vlft_variants(outside) == ["DoraLinearVariant"]
    assert {cls: cls.__dict__["resolve_lora_variant"] for cls in dora._layer_classes()} == originals


def test_peft_dora_caching_caches_the_norm_in_eval_only():
    model = peft_model()
    use_vlft_dora(model)
    caches = [m._dora_cache for m in model.modules() if hasattr(m, "_dora_cache")]
    x, image = torch.randn(3, 64), torch.randn(2, 3, 16, 16)
    want = model.eval()(x, image)
    assert caches and not any(caches)
    with DoraCaching():
        cached = model(x, image)
        assert all(caches)
        again = model(x, image)
    for a, b, c in zip(cached, again, want, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)
    model(x, image)
    assert not any(caches)  # used outside the block: cleared, as peft does
    with DoraCaching():
        model.train()(x, image)
        assert not any(caches)  # never while training
