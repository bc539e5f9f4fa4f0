"""A faster DoRA that computes peft's function, for Linear and Conv2d.

peft's DoRA forward builds the dense out x in matrix B·A (through ``lora_B(lora_A(eye))``), adds
it to W and takes row norms, then combines base and LoRA outputs with several elementwise passes
whose autograd graph keeps two activation-sized tensors. Here:

- the row norm never forms B·A:
  ``||W + sBA||²_row = ||W||²_row + 2s·rowsum((W·Aᵀ) ⊙ B) + s²·rowsum((B·(A·Aᵀ)) ⊙ B)``,
  with ``||W||²_row`` cached while W is unchanged (a Conv2d kernel is flattened to out x in·kh·kw);
- the norm is computed without autograd (DoRA paper §4.3: treated as a constant in backward);
- ``g ⊙ (Wx + s·BAx) + b`` with ``g = m / norm`` is one autograd Function that saves one tensor.

Only the LoRA *variant* object on each DoRA layer is swapped (peft's strategy hook): parameter
names, the adapter file format, merge and unmerge all stay peft's own.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.lora.variants import DoraConv2dVariant, DoraLinearVariant
from peft.utils.integrations import gather_params_ctx
from torch import nn


class _DoraScale(torch.autograd.Function):
    """out = g ⊙ (y - b + s·lora) + b along ``channel_dim``, g = magnitude * inv_norm.

    y is the base layer's output (bias b included, or None). The magnitude gradient needs
    z = y - b + s·lora. With ``recompute_z`` given, the Function saves its own output instead and
    recovers z = (out - b) / g: the next op (an activation, attention, a norm) usually keeps that
    tensor anyway, so no extra activation is held. If the output was modified in place meanwhile
    (or some g is 0), ``recompute_z()`` rebuilds z from the layer input.
    """

    @staticmethod
    def forward(ctx, y, lora, magnitude, inv_norm, bias, scaling: float, channel_dim: int, recompute_z):
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        z = torch.add(y, lora, alpha=scaling)  # a fresh tensor: the bias can come off in place
        if bias is not None:
            z.sub_(bias.view(shape))
        g = (magnitude * inv_norm).view(shape)
        out = torch.addcmul(bias.view(shape), z, g) if bias is not None else z * g
        ctx.save_for_backward(out if recompute_z is not None else z)
        ctx.g, ctx.inv_norm, ctx.bias, ctx.shape = g, inv_norm, bias, shape
        ctx.scaling, ctx.channel_dim, ctx.recompute_z = scaling, channel_dim, recompute_z
        return out

    @staticmethod
    def backward(ctx, grad_out):
        g, inv_norm = ctx.g, ctx.inv_norm
        grad_z = grad_out * g
        grad_lora = grad_z * ctx.scaling if ctx.needs_input_grad[1] else None
        grad_magnitude = None
        if ctx.needs_input_grad[2]:
            z = _saved_z(ctx)
            if ctx.channel_dim == z.dim() - 1:  # Linear: a dot product per channel, no (N, out) temporary
                channels = z.shape[-1]
                summed = torch.linalg.vecdot(grad_out.reshape(-1, channels), z.reshape(-1, channels), dim=0)
            else:  # Conv2d: channels are not innermost; reordering would copy more than the product does
                summed = (grad_out * z).sum(dim=[d for d in range(z.dim()) if d != ctx.channel_dim])
            grad_magnitude = summed.to(inv_norm.dtype) * inv_norm
        ctx.recompute_z = None
        return grad_z, grad_lora, grad_magnitude, None, None, None, None, None


def _saved_z(ctx) -> torch.Tensor:
    if ctx.recompute_z is None:
        return ctx.saved_tensors[0]
    try:
        (out,) = ctx.saved_tensors
    except RuntimeError:  # the output was modified in place after the forward
        return ctx.recompute_z()
    if (ctx.g == 0).any():
        return ctx.recompute_z()
    z = out - ctx.bias.view(ctx.shape) if ctx.bias is not None else out
    return z / ctx.g


def _flat(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


@torch.no_grad()
def weight_row_norm(module: LoraLayer, adapter: str, base_weight: torch.Tensor) -> torch.Tensor:
    """||W + s·B·A|| per output channel (fp32), without the out x in product B·A."""
    A = _flat(module.lora_A[adapter].weight).float()  # (r, in·k)
    B = _flat(module.lora_B[adapter].weight).float()  # (out, r)
    W = _flat(base_weight).float()  # (out, in·k)
    s = module.scaling[adapter]
    squared = cached_squared_row_norm(module, base_weight, W)
    cross = ((W @ A.T) * B).sum(dim=1)
    lora_sq = ((B @ (A @ A.T)) * B).sum(dim=1)
    # clamp: with a tiny update, rounding could push the sum a hair below zero
    return (squared + 2 * s * cross + s * s * lora_sq).clamp_min(0).sqrt()


def cached_squared_row_norm(module: nn.Module, base_weight: torch.Tensor, flat_fp32: torch.Tensor) -> torch.Tensor:
    """||W||² per row, recomputed only when W changes (new storage, in-place edit, dtype or device)."""
    key = (base_weight.data_ptr(), base_weight._version, base_weight.dtype, base_weight.device, base_weight.shape)
    cache = getattr(module, "_vlft_weight_sq", None)
    if cache is None or cache[0] != key:
        cache = (key, flat_fp32.pow(2).sum(dim=1))
        module._vlft_weight_sq = cache
    return cache[1]


@contextmanager
def _gathered_if_partitioned(weight: torch.Tensor):
    """ZeRO-3 normally holds W gathered while its module runs; gather it (read-only) only if it is not."""
    status = getattr(weight, "ds_status", None)
    if status is None or status.name != "NOT_AVAILABLE":
        yield
        return
    with gather_params_ctx(weight, modifier_rank=None):
        yield


def _dora_forward(module: LoraLayer, adapter: str, x: torch.Tensor, result: torch.Tensor, base_fn,
                  channel_dim: int) -> torch.Tensor:
    """peft's DoRA output given ``result = base_layer(x)``; ``base_fn(x, W)`` applies W without bias."""
    base = module.get_base_layer()
    lora_A, lora_B = module.lora_A[adapter], module.lora_B[adapter]
    dropout, scaling = module.lora_dropout[adapter], module.scaling[adapter]
    magnitude = module.lora_magnitude_vector[adapter].weight.reshape(-1)
    channel_dim = channel_dim % result.dim()
    with _gathered_if_partitioned(base.weight):
        inv_norm = weight_row_norm(module, adapter, base.weight).reciprocal().to(magnitude.dtype)
        if isinstance(dropout, nn.Identity) or not module.training:
            dtype = result.dtype  # the closure below must not hold on to `result`
            lora = lora_B(lora_A(x)).to(dtype)

            @torch.no_grad()
            def recompute_z():
                with _gathered_if_partitioned(base.weight):
                    return base_fn(x, base.weight) + scaling * lora_B(lora_A(x)).to(dtype)

            return _DoraScale.apply(result, lora, magnitude, inv_norm, base.bias, scaling, channel_dim, recompute_z)
        # peft applies W to the dropped-out input in this case: same function, so a second matmul
        x = dropout(x)
        y = base_fn(x, base.weight)
    lora = lora_B(lora_A(x)).to(y.dtype)
    scaled = _DoraScale.apply(y, lora, magnitude, inv_norm, None, scaling, channel_dim, None)
    return result + (scaled - y).to(result.dtype)


class VlftDoraLinearVariant(DoraLinearVariant):
    """peft's DoRA for nn.Linear with vlft's forward; init, merge and unmerge are peft's."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        if getattr(module, "fan_in_fan_out", False):
            return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
        return _dora_forward(module, active_adapter, x, result, lambda inp, w: F.linear(inp, w), channel_dim=-1)


class VlftDoraConv2dVariant(DoraConv2dVariant):
    """peft's DoRA for nn.Conv2d with vlft's forward (any stride, padding, dilation; groups=1)."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        base = module.get_base_layer()
        if base.groups != 1:
            return DoraConv2dVariant.forward(module, active_adapter, x, result, **kwargs)

        def conv(inp, w):
            return F.conv2d(inp, w, None, base.stride, base.padding, base.dilation, base.groups)

        return _dora_forward(module, active_adapter, x, result, conv, channel_dim=1)


FAST_VARIANTS = {DoraLinearVariant: VlftDoraLinearVariant, DoraConv2dVariant: VlftDoraConv2dVariant}


def use_vlft_dora(model: nn.Module) -> int:
    """Swap peft's DoRA variants for vlft's on every layer of ``model``; returns how many were swapped."""
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
