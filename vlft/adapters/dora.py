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
    z = y - b + s·lora. With ``recompute_z`` given, the Function saves its own output instead: the
    next op (an activation, attention, a norm) usually keeps that tensor anyway, so no extra
    activation is held (see ``_magnitude_grad``).
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
        ctx.g, ctx.inv_norm, ctx.bias = g, inv_norm, bias
        ctx.scaling, ctx.channel_dim, ctx.recompute_z = scaling, channel_dim, recompute_z
        return out

    @staticmethod
    def backward(ctx, grad_out):
        recompute_z, ctx.recompute_z = ctx.recompute_z, None
        grad_z = grad_out * ctx.g
        grad_lora = grad_z * ctx.scaling if ctx.needs_input_grad[1] else None
        grad_magnitude = None
        if ctx.needs_input_grad[2]:
            if recompute_z is None:
                z, out = ctx.saved_tensors[0], None
            else:
                out = _saved_output(ctx, 0)
                z = recompute_z()[1] if out is None or (ctx.g == 0).any() else None
            grad_magnitude = _magnitude_grad(grad_out, ctx, ctx.channel_dim, z=z, out=out)
        return grad_z, grad_lora, grad_magnitude, None, None, None, None, None


def _saved_output(ctx, index: int) -> torch.Tensor | None:
    try:
        return ctx.saved_tensors[index]
    except RuntimeError:  # the output was modified in place after the forward
        return None


def _channel_sum(a: torch.Tensor, b: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """sum of a ⊙ b over every dim but ``channel_dim``, in fp32."""
    if channel_dim == a.dim() - 1:  # Linear: a dot product per channel
        channels = a.shape[-1]
        return torch.linalg.vecdot(a.reshape(-1, channels), b.reshape(-1, channels), dim=0).float()
    # Conv2d: channels are not innermost; reordering would copy more than the product does
    return (a * b).sum(dim=[d for d in range(a.dim()) if d != channel_dim]).float()


def _magnitude_grad(grad_out, ctx, channel_dim: int, z=None, out=None) -> torch.Tensor:
    """d loss / d magnitude = inv_norm · Σ grad_out ⊙ z, z the pre-scaling output (bias excluded).

    Given the output instead of z: Σ grad·z = (Σ grad·out − b·Σ grad) / g, so z is never formed.
    """
    channel_dim %= grad_out.dim()
    if z is not None:
        summed = _channel_sum(grad_out, z, channel_dim)
    else:
        summed = _channel_sum(grad_out, out, channel_dim)
        if ctx.bias is not None:
            other_dims = [d for d in range(grad_out.dim()) if d != channel_dim]
            summed -= ctx.bias.reshape(-1).float() * grad_out.sum(dim=other_dims).float()
        summed /= ctx.g.reshape(-1).float()
    return summed.to(ctx.inv_norm.dtype) * ctx.inv_norm


class _DoraLinear(torch.autograd.Function):
    """The whole DoRA Linear given the base output y = Wx + b, for dropout 0 and one dtype throughout.

    out = g ⊙ y + (s·g ⊙ B)(A x) + b ⊙ (1 − g): the scales go onto the small matrix B and the bias
    term rides in the LoRA matmul, so one elementwise pass (addcmul) is left in the forward. In the
    backward the scales are applied to (out, r) products, not to activation-sized tensors.
    ``recompute()`` returns (A x, z) for when the saved output was modified in place or some g is 0.
    """

    @staticmethod
    def forward(ctx, x, y, lora_A, lora_B, magnitude, inv_norm, bias, scaling: float, recompute):
        g = magnitude * inv_norm
        hidden = F.linear(x, lora_A)
        out = F.linear(hidden, lora_B * (scaling * g).unsqueeze(1), None if bias is None else bias * (1 - g))
        out.addcmul_(y, g)
        ctx.save_for_backward(out, x, hidden)
        ctx.lora_A, ctx.lora_B, ctx.g, ctx.inv_norm, ctx.bias = lora_A, lora_B, g, inv_norm, bias
        ctx.scaling, ctx.recompute = scaling, recompute
        return out

    @staticmethod
    def backward(ctx, grad_out):
        recompute, ctx.recompute = ctx.recompute, None
        g, needs = ctx.g, ctx.needs_input_grad
        out = _saved_output(ctx, 0)
        if out is None:
            x, (hidden, z) = recompute.x, recompute()
        else:
            _, x, hidden = ctx.saved_tensors
            z = recompute()[1] if needs[4] and (g == 0).any() else None
        grad_y = grad_out * g if needs[1] else None
        grad_hidden = grad_out @ (ctx.lora_B * (ctx.scaling * g).unsqueeze(1))
        grad_x = grad_hidden @ ctx.lora_A if needs[0] else None
        grad_A = _flat_t(grad_hidden) @ x.reshape(-1, x.shape[-1]) if needs[2] else None
        grad_B = None
        if needs[3]:
            grad_B = (_flat_t(grad_out) @ hidden.reshape(-1, hidden.shape[-1])) * (ctx.scaling * g).unsqueeze(1)
        grad_magnitude = _magnitude_grad(grad_out, ctx, -1, z=z, out=out) if needs[4] else None
        return grad_x, grad_y, grad_A, grad_B, grad_magnitude, None, None, None, None


def _flat_t(t: torch.Tensor) -> torch.Tensor:
    """(..., c) -> (c, N)."""
    return t.reshape(-1, t.shape[-1]).T


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


class _Recompute:
    """Rebuilds (A x, z) from the layer input, for when the saved output cannot give z."""

    def __init__(self, module: LoraLayer, adapter: str, x: torch.Tensor, base_fn, dtype: torch.dtype):
        self.module, self.adapter, self.x, self.base_fn, self.dtype = module, adapter, x, base_fn, dtype

    @torch.no_grad()
    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        module, base = self.module, self.module.get_base_layer()
        hidden = module.lora_A[self.adapter](self.x)
        lora = module.lora_B[self.adapter](hidden).to(self.dtype)
        with _gathered_if_partitioned(base.weight):
            return hidden, self.base_fn(self.x, base.weight) + module.scaling[self.adapter] * lora


def _fusable_linear(module: LoraLayer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> bool:
    """Whether ``_DoraLinear`` applies: plain bias-free LoRA matrices, one dtype, no autocast."""
    lora_A, lora_B = module.lora_A[adapter], module.lora_B[adapter]
    if type(lora_A) is not nn.Linear or type(lora_B) is not nn.Linear or lora_B.bias is not None:
        return False
    dtypes = {x.dtype, result.dtype, lora_A.weight.dtype, lora_B.weight.dtype}
    return len(dtypes) == 1 and not torch.is_autocast_enabled(x.device.type)


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
            recompute = _Recompute(module, adapter, x, base_fn, result.dtype)
            if channel_dim == result.dim() - 1 and _fusable_linear(module, adapter, x, result):
                return _DoraLinear.apply(x, result, lora_A.weight, lora_B.weight, magnitude, inv_norm, base.bias,
                                         scaling, recompute)
            lora = lora_B(lora_A(x)).to(result.dtype)
            return _DoraScale.apply(result, lora, magnitude, inv_norm, base.bias, scaling, channel_dim, recompute)
        # peft applies W to the dropped-out input in this case: same function, so a second matmul
        x = dropout(x)
        y = base_fn(x, base.weight)
    lora = lora_B(lora_A(x)).to(y.dtype)
    scaled = _DoraScale.apply(y, lora, magnitude, inv_norm, None, scaling, channel_dim, None)
    return result + (scaled - y).to(result.dtype)


def _trainable_bias(base: nn.Module) -> bool:
    # vlft's Functions treat the base bias as a constant, as vlft's configs always leave it
    return getattr(base, "bias", None) is not None and base.bias.requires_grad


class VlftDoraLinearVariant(DoraLinearVariant):
    """peft's DoRA for nn.Linear with vlft's forward; init, merge and unmerge are peft's."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        if getattr(module, "fan_in_fan_out", False) or _trainable_bias(module.get_base_layer()):
            return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
        return _dora_forward(module, active_adapter, x, result, lambda inp, w: F.linear(inp, w), channel_dim=-1)


class VlftDoraConv2dVariant(DoraConv2dVariant):
    """peft's DoRA for nn.Conv2d with vlft's forward (any stride, padding, dilation; groups=1)."""

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        base = module.get_base_layer()
        if base.groups != 1 or _trainable_bias(base):
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
