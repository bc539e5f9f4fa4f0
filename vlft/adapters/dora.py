"""A faster DoRA that computes peft's function, for Linear and Conv2d (quantized bases included).

peft's DoRA forward builds the dense out x in matrix B·A (through ``lora_B(lora_A(eye))``), adds it to
a copy of W cast to the input's dtype, takes row norms, and combines base and LoRA outputs in several
elementwise passes whose graph keeps two activation-sized tensors. Here (``_dora_autograd.py``):

- the row norm never forms B·A, reads W in its own dtype (a bnb 4/8-bit W dequantized) and is fp32;
- the norm is outside autograd (DoRA paper §4.3: treated as a constant in backward);
- a Linear layer is one autograd Function (the LoRA matmuls inside), a Conv2d one Function after its
  LoRA convs; each keeps one activation-sized tensor and never touches W in backward.

No norm is cached while training (W is read anyway for W·Aᵀ, and a cache keyed on W cannot see writes
through ``.data``); in eval mode peft's own opt-in ``peft.helpers.DoraCaching`` caches it.

Only the LoRA *variant* object on each DoRA layer differs (peft's strategy hook): parameter names, the
adapter file format, merge and unmerge stay peft's own. Layers get vlft's variant where peft resolves it,
``resolve_lora_variant``, inside ``vlft_dora_variants()``, or for good on one model with ``use_vlft_dora``.
"""

from __future__ import annotations

import contextvars
import threading
import types
from contextlib import contextmanager, nullcontext

import torch
from peft.tuners.lora import dora as peft_dora
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.lora.variants import DoraConv2dVariant, DoraLinearVariant
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.integrations import dequantize_module_weight, gather_params_ctx
from torch import nn

from vlft.adapters._dora_autograd import DoraLinearFn, DoraScaleFn, as_dtype, inv_weight_norm


def layer_inv_norm(module: LoraLayer, adapter: str, weight: torch.Tensor | None = None,
                   base: nn.Module | None = None) -> torch.Tensor:
    """1 / ||W + s·B·A|| per output channel (fp32) of one DoRA layer; W dequantized if the base is quantized
    (``weight``: the dequantized W, ``base``: the base layer, when the caller has them already).

    Cached only under peft's ``DoraCaching`` in eval mode, in peft's per-layer cache (cleared by ``train()``).
    """
    base = base_layer(module) if base is None else base
    holder = module.lora_magnitude_vector[adapter]
    if not peft_dora.ENABLE_DORA_CACHING or module.training:
        holder._cache_clear()  # as peft's cache decorator does outside caching
        return _compute_inv_norm(module, adapter, base, weight)
    key = f"vlft-inv-norm-{adapter}"
    inv_norm = holder._cache_get(key, None)
    if inv_norm is None:
        inv_norm = _compute_inv_norm(module, adapter, base, weight)
        holder._cache_store(key, inv_norm)
    return inv_norm


def _compute_inv_norm(module: LoraLayer, adapter: str, base: nn.Module, weight: torch.Tensor | None):
    status = getattr(getattr(base, "weight", None), "ds_status", None)
    # ZeRO-3 holds W gathered while its module runs; gather it here (read-only) only if it is not
    partitioned = weight is None and status is not None and status.name == "NOT_AVAILABLE"
    gathered = gather_params_ctx(base.weight, modifier_rank=None) if partitioned else nullcontext()
    with gathered, torch.no_grad():
        return inv_weight_norm(dequantized_weight(base) if weight is None else weight,
                               module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter])


def base_layer(module: LoraLayer) -> nn.Module:
    """peft's ``get_base_layer`` by dictionary lookups (``hasattr`` on a module raises and catches an
    AttributeError inside: microseconds a layer, which count where steps are launch-bound)."""
    while "base_layer" in module._modules:
        module = module._modules["base_layer"]
    return module


def dequantized_weight(base: nn.Module) -> torch.Tensor:
    """W of a base layer, dequantized if quantized, read without changing the layer: peft's helper re-wraps a
    bitsandbytes weight on the CPU at every call, which loses LLM.int8's scales after the first forward."""
    weight = getattr(base, "weight", None)
    if not _quantized(base):
        return weight
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
    if kind == "Int8Params":  # the int8 rows and their scales sit on the weight until the first forward moves them
        import bitsandbytes.functional as bnb_functional

        state = base.state
        rows = state.CB if state.CB is not None else weight.data
        scales = state.SCB if state.SCB is not None else weight.SCB
        return bnb_functional.int8_vectorwise_dequant(rows, scales)
    return dequantize_module_weight(base)  # torchao and HQQ


def _quantized(base: nn.Module) -> bool:
    """Whether the base stores something other than W (bitsandbytes' Params4bit and Int8Params, torchao, HQQ);
    by dictionary lookups, not ``hasattr``, which on a module raises and catches inside."""
    if "W_q" in base._parameters or "W_q" in base._buffers or "W_q" in base.__dict__:  # HQQ
        return True
    weight = getattr(base, "weight", None)
    return weight is not None and type(weight) not in (nn.Parameter, torch.Tensor)


class _DequantizedLinear(torch.autograd.Function):
    """x·Wᵀ + b of a quantized base from its dequantized W, made again in backward rather than kept. (Calling a
    bitsandbytes 8-bit layer a second time in a step breaks the state its backward reads.)"""

    @staticmethod
    def forward(ctx, x, weight, base):
        ctx.base = base
        bias = None if base.bias is None else as_dtype(base.bias, x.dtype)
        return torch.nn.functional.linear(x, as_dtype(weight, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.no_grad():
            weight = dequantized_weight(ctx.base)
        return grad_out @ as_dtype(weight, grad_out.dtype), None, None


def _lora_dtype(lora_A: nn.Module, x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return lora_A.weight.dtype


def _plain_lora(lora_A: nn.Module, lora_B: nn.Module) -> bool:
    """Whether the LoRA matrices are plain bias-free nn.Linear (what ``DoraLinearFn`` multiplies itself)."""
    return type(lora_A) is nn.Linear and type(lora_B) is nn.Linear and lora_B.bias is None


def dora_forward(module: LoraLayer, adapter: str, x: torch.Tensor, result: torch.Tensor, channel_dim: int):
    """peft's DoRA output for ``result = base_layer(x)`` (x in the adapters' dtype, as peft passes it)."""
    base = base_layer(module)
    lora_A, lora_B = module.lora_A[adapter], module.lora_B[adapter]
    dropout, scaling = module.lora_dropout[adapter], module.scaling[adapter]
    magnitude = module.lora_magnitude_vector[adapter].weight  # (out,); a Conv2d's is (1, out, 1, 1)
    y_drop = weight = None
    if module.training and not isinstance(dropout, nn.Identity):
        # peft applies W to the dropped-out input: so do we, in the dtype the base layer gave its output in,
        # through the base layer itself (its ZeRO-3 hooks and autograd) or, quantized, its dequantized W
        x = dropout(x)
        if _quantized(base):
            with torch.no_grad():
                weight = dequantized_weight(base)  # once, for this and for the norm
            y_drop = _DequantizedLinear.apply(as_dtype(x, result.dtype), weight, base)
        else:
            y_drop = base(as_dtype(x, result.dtype))
    inv_norm = layer_inv_norm(module, adapter, weight, base)
    bias = base.bias if getattr(base, "bias", None) is not None else None
    if channel_dim == -1 and _plain_lora(lora_A, lora_B):
        return DoraLinearFn.apply(x, result, y_drop, lora_A.weight, lora_B.weight, magnitude, inv_norm, bias,
                                  scaling, _lora_dtype(lora_A, x))
    lora = lora_B(lora_A(x))
    return DoraScaleFn.apply(result, y_drop, lora, magnitude, inv_norm, bias, scaling, channel_dim % result.dim())


def _trainable_bias(base: nn.Module) -> bool:
    # vlft's Functions treat the base bias as a constant, as vlft's configs always leave it
    return getattr(base, "bias", None) is not None and base.bias.requires_grad


class VlftDoraLinearVariant(DoraLinearVariant):
    """peft's DoRA for nn.Linear (and bnb Linear4bit / Linear8bitLt) with vlft's forward; init, merge and
    unmerge are peft's."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        if getattr(module, "fan_in_fan_out", False) or _trainable_bias(base_layer(module)):
            return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
        return dora_forward(module, active_adapter, x, result, channel_dim=-1)


class VlftDoraConv2dVariant(DoraConv2dVariant):
    """peft's DoRA for nn.Conv2d with vlft's forward (any stride, padding, dilation; groups=1)."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        base = base_layer(module)
        if base.groups != 1 or _trainable_bias(base):
            return DoraConv2dVariant.forward(module, active_adapter, x, result, **kwargs)
        return dora_forward(module, active_adapter, x, result, channel_dim=1)


FAST_VARIANTS = {DoraLinearVariant: VlftDoraLinearVariant, DoraConv2dVariant: VlftDoraConv2dVariant}

# --- where layers get vlft's variant: peft's resolve_lora_variant, within a scope -------------------------

_ACTIVE = contextvars.ContextVar("vlft_dora_variants", default=False)
_hook_lock = threading.Lock()
_hook_users = 0
_originals: dict[type, object] = {}


def _resolving_to_vlft(original):
    def resolve_lora_variant(self, *args, **kwargs):
        variant = original(self, *args, **kwargs)
        fast = FAST_VARIANTS.get(type(variant)) if _ACTIVE.get() else None
        return fast() if fast is not None else variant

    resolve_lora_variant.__wrapped__ = original
    return resolve_lora_variant


def _layer_classes() -> list[type]:
    """LoraLayer and every subclass that defines its own resolve_lora_variant (bnb's, gptq's, ...)."""
    found, todo = [], [LoraLayer]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "resolve_lora_variant" in cls.__dict__:
            found.append(cls)
    return found


def _install_hook() -> None:
    global _hook_users
    with _hook_lock:
        if _hook_users == 0:
            for cls in _layer_classes():
                _originals[cls] = cls.__dict__["resolve_lora_variant"]
                cls.resolve_lora_variant = _resolving_to_vlft(_originals[cls])
        _hook_users += 1


def _remove_hook() -> None:
    global _hook_users
    with _hook_lock:
        _hook_users -= 1
        if _hook_users == 0:
            for cls, original in _originals.items():
                cls.resolve_lora_variant = original
            _originals.clear()


@contextmanager
def vlft_dora_variants():
    """Within this block (this thread or task only), DoRA layers that peft creates or extends resolve to
    vlft's variants. Outside every such block peft's classes are exactly stock."""
    token = _ACTIVE.set(True)
    _install_hook()
    try:
        yield
    finally:
        _remove_hook()
        _ACTIVE.reset(token)


def _inject_adapter_with_vlft_dora(self, *args, **kwargs):
    """``inject_adapter`` of a model switched to vlft's DoRA: the path of add_adapter and load_adapter."""
    with vlft_dora_variants():
        return type(self).inject_adapter(self, *args, **kwargs)


def use_vlft_dora(model: nn.Module) -> int:
    """Switch ``model`` to vlft's DoRA for good: DoRA layers it has now, and those any later ``add_adapter``
    or ``load_adapter`` creates. Returns how many existing layers' variants were swapped (0 for a model
    built inside ``vlft_dora_variants()``)."""
    for module in model.modules():
        if isinstance(module, BaseTuner) and hasattr(module, "inject_adapter"):
            module.inject_adapter = types.MethodType(_inject_adapter_with_vlft_dora, module)
    swapped = 0
    for module in model.modules():
        variants = getattr(module, "lora_variant", None)
        if not isinstance(module, LoraLayer) or not variants:
            continue
        for adapter, variant in list(variants.items()):
            fast = FAST_VARIANTS.get(type(variant))
            if fast is not None:
                variants[adapter] = fast()
                swapped += 1
    return swapped
