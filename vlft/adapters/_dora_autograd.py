"""The arithmetic of vlft's DoRA: the row norm without B·A, and two autograd Functions.

Both compute peft's DoRA output with ``g = m / ||W + s·B·A||`` (the norm a constant, DoRA paper §4.3)
written as ``g = 1 + δ``:

    out = result + δ ⊙ (y − b) + g ⊙ s·(B·A·x')       y = result (dropout off) or base(x') (dropout on)

(x' the dropped-out input; peft applies W to it). δ is small, so it keeps its precision in bf16, where
g itself could only move in steps of 2^-7 near 1 and small magnitude updates would vanish.

Each Function saves one activation-sized tensor besides what LoRA saves (y, or z = y − b + s·lora),
never reads a weight in backward, reads ``ctx.saved_tensors`` once and changes no ctx state there
(activation checkpointing, ``retain_graph=True``), and has no data-dependent Python branch (no host sync).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

# CPU reductions cast a low-precision input to fp32 whole before reducing (CUDA reads bf16 and accumulates
# in fp32 in the kernel): on the CPU, ||W||² of a bf16 W is taken in blocks of at most this many elements.
_CPU_NORM_BLOCK = 1 << 22


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without dispatching anything when it is already that dtype."""
    return t if t.dtype == dtype else t.to(dtype)


def autocast_off(device_type: str):
    """Autocast switched off for code whose every dtype is chosen on purpose; nothing to enter (a few µs a
    layer, which count where steps are launch-bound) when autocast is off already."""
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def promoted(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types``, which the profiler counts as an op, only where the dtypes differ."""
    return a if a == b else torch.promote_types(a, b)


def _into(dtype: torch.dtype, op, *args, **kwargs) -> torch.Tensor:
    """``op(*args)`` computed in the arguments' dtype and written in ``dtype``: one kernel on a GPU, where a
    cast after it would be a second."""
    if args[0].dtype == dtype:
        return op(*args, **kwargs)
    return op(*args, **kwargs, out=torch.empty(args[0].shape, dtype=dtype, device=args[0].device))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(..., c) -> (N, c); no op for a 2-D tensor."""
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight as (out, everything else): a Conv2d kernel (out, in, kh, kw) -> (out, in·kh·kw)."""
    if t.dim() == 2:
        return t
    return t.view(t.shape[0], -1) if t.is_contiguous() else t.reshape(t.shape[0], -1)


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """(out, k) -> (out,) fp32 row norms, with no full-size fp32 copy of a low-precision W."""
    if weight.dtype == torch.float32 or weight.device.type != "cpu" or weight.numel() <= _CPU_NORM_BLOCK:
        return torch.linalg.vector_norm(weight, dim=1, dtype=torch.float32)
    rows = max(1, _CPU_NORM_BLOCK // weight.shape[1])
    return torch.cat([torch.linalg.vector_norm(b, dim=1, dtype=torch.float32) for b in weight.split(rows)])


def inv_weight_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """1 / ||W + s·B·A|| per output channel (fp32, shape (out,)), without the out x in product B·A. Called under
    no_grad: the norm is a constant to autograd.

    ``||W + sBA||²_row = ||W||²_row + rowsum(B ⊙ (2s·W·Aᵀ + s²·B·A·Aᵀ))``; a Conv2d kernel is flattened to
    out x (in·kh·kw). W is read twice, in its own dtype (the row norms, and W·Aᵀ with fp32 accumulation).
    fp32 where it matters: ||W||² sums in·k squares (rounded to bf16, every channel's g would be off by up
    to 2^-9, so DoRA at init would not equal the base layer; in fp16 a wide layer's sum could overflow),
    and the terms are added and inverted in fp32. The small (out, r) and (r, r) products, sums over r
    terms, are in the adapters' dtype, as the LoRA product itself is.
    """
    W, B = _matrix(weight), _matrix(lora_B)
    A = as_dtype(_matrix(lora_A), B.dtype)
    A_t = A.t()  # one transposed view for both products
    with autocast_off(W.device.type):  # autocast would copy W to its dtype
        # (out, r): 2s·W·Aᵀ + s²·B·A·Aᵀ, the first product fresh, so the second adds into it in place
        cross = as_dtype(torch.mm(W, as_dtype(A_t, W.dtype)), B.dtype)
        cross.addmm_(B, torch.mm(A, A_t), beta=2 * scaling, alpha=scaling * scaling)
        norms = _row_norms(W)
        squared = torch.addcmul(as_dtype((B * cross).sum(dim=1), torch.float32), norms, norms)
    # clamp: a tiny update can round the sum a hair below zero; a zero row gives inf, as peft's m / 0 does
    return squared.clamp_min_(0).rsqrt_()


def _scale_and_token_sum(grad: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, channels_last: bool,
                         want_scaled: bool, want_sum: bool):
    """(``grad ⊙ scale``, ``Σ grad ⊙ y`` over every dim but the channels', fp32), each if wanted, in one op.

    That pair is batch norm's backward in eval mode with weight ``scale``, running mean 0 and running variance
    0 + eps 1 (invstd 1): grad_input = grad·weight·invstd, grad_weight = Σ grad·(y − mean)·invstd. Its kernels
    read grad and y and write only the scaled gradient, where ``grad * scale`` and ``(grad * y).sum()`` also
    write, and read back, a product the size of the activation. Products and sums are fp32 (fp16 gradients
    with loss scaling would overflow a low-precision sum over all tokens); the scaled gradient is rounded once,
    to grad's dtype.
    ``channels_last``: channels on the last dim (a Linear's), else on dim 1 (a Conv2d's, batch norm's own).
    """
    if not (want_scaled or want_sum):
        return None, None
    shape = grad.shape
    if channels_last:
        grad, y = _flat(grad), _flat(y)
    channels = grad.shape[1]
    stat_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32  # what batch norm takes
    if grad.numel() == 0:  # batch norm's CPU kernel would divide by zero elements
        return (grad.new_empty(shape) if want_scaled else None), grad.new_zeros(channels, dtype=stat_dtype)
    zeros, unsaved = _zeros(channels, stat_dtype, grad.device), _zeros(0, stat_dtype, grad.device)
    scale = as_dtype(scale if scale.dim() == 1 else scale.view(channels), stat_dtype)
    # eval mode reads the running statistics; the saved ones must still be tensors (empty) for CUDA's kernel
    scaled, summed, _ = torch.ops.aten.native_batch_norm_backward(
        grad, as_dtype(y, grad.dtype), scale, zeros, zeros, unsaved, unsaved, False, 1.0,
        [want_scaled, want_sum, False])
    if want_scaled and scaled.shape != shape:
        scaled = scaled.view(shape)
    return scaled, summed


_ZEROS: dict[tuple, torch.Tensor] = {}


def _zeros(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A vector of zeros made once per (size, dtype, device) and only ever read (ops saved in every layer)."""
    key = (size, dtype, device)
    zeros = _ZEROS.get(key)
    if zeros is None:
        zeros = _ZEROS[key] = torch.zeros(size, dtype=dtype, device=device)
    return zeros


class DoraLinearFn(torch.autograd.Function):
    """The whole DoRA Linear (plain bias-free LoRA matrices) given the base output ``result``.

    Forward: ``out = result + δ ⊙ (y − b)`` (one elementwise pass; a bias adds one for ``y − b``), then one
    GEMM adds ``h·(s·g⊙B)ᵀ`` in place, ``h = x'·Aᵀ``. Saved: x' and h (as LoRA saves them) and y − b, the one
    extra activation. Backward: the magnitude gradient is ``inv_norm · (Σ G⊙(y − b) + s·rowsum(B ⊙ Gᵀh))``
    with Gᵀh grad_B's own product: no pre-scaling output is formed, and a zero magnitude needs nothing
    special. The token sum and the base output's gradient g⊙G come from one op over G and y.

    Dtypes: x' and A in ``lora_dtype`` (the autocast dtype, else the adapters'); the output in the promotion
    of that and result's dtype (fp32 adapters on a bf16 base: fp32, which peft casts back, as for LoRA).
    """

    @staticmethod
    def forward(ctx, x, result, y_drop, lora_A, lora_B, magnitude, inv_norm, bias, scaling: float, lora_dtype):
        out_dtype = promoted(lora_dtype, result.dtype)
        g = inv_norm * magnitude  # fp32
        delta = _into(out_dtype, torch.sub, g, 1)
        scaled_g = _into(lora_B.dtype, torch.mul, g, scaling)
        x2 = _flat(as_dtype(x, lora_dtype))
        A = as_dtype(lora_A, lora_dtype)
        y = result if y_drop is None else y_drop
        if bias is not None:  # y − b, saved instead of y: the bias then needs nothing more, here or in backward
            y = y - as_dtype(bias, y.dtype)
        with autocast_off(x.device.type):  # every dtype here is chosen on purpose
            h = as_dtype(torch.mm(x2, A.t()), out_dtype)  # (N, r)
            B_scaled = as_dtype(lora_B * scaled_g.unsqueeze(1), out_dtype)  # (out, r)
            out = torch.addcmul(result, y, delta)
            _flat(out).addmm_(h, B_scaled.t())
        grad_scale = delta if y_drop is not None else g  # d out / d y: g − 1 with dropout, else g
        ctx.save_for_backward(x2, A, h, y, B_scaled, scaled_g, grad_scale, lora_B, inv_norm)
        ctx.scaling, ctx.dropout, ctx.x_shape = scaling, y_drop is not None, x.shape
        ctx.dtypes = lora_A.dtype, magnitude.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x2, A, h, y, B_scaled, scaled_g, grad_scale, lora_B, inv_norm = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_A = grad_B = grad_m = None
        # g ⊙ G to the base output, or with dropout G to it and (g − 1) ⊙ G to the base of x'; Σ G ⊙ (y − b)
        scaled, summed = _scale_and_token_sum(grad_out, y, grad_scale, True, needs[2 if ctx.dropout else 1], needs[5])
        grad_result = (grad_out if needs[1] else None) if ctx.dropout else scaled
        grad_y = scaled if ctx.dropout else None
        G = _flat(grad_out)
        if needs[0] or needs[3]:
            grad_h = as_dtype(torch.mm(G, B_scaled), A.dtype)
            grad_x = torch.mm(grad_h, A).view(ctx.x_shape) if needs[0] else None
            grad_A = as_dtype(torch.mm(grad_h.t(), x2), ctx.dtypes[0]) if needs[3] else None
        if needs[4] or needs[5]:
            gT_h = as_dtype(torch.mm(G.t(), h), lora_B.dtype)  # (out, r)
            if needs[4]:
                grad_B = gT_h * scaled_g.unsqueeze(1)
            if needs[5]:
                summed.add_(as_dtype((lora_B * gT_h).sum(dim=1), torch.float32), alpha=ctx.scaling)
                grad_m = _into(ctx.dtypes[1], torch.mul, summed, inv_norm)
        return grad_x, grad_result, grad_y, grad_A, grad_B, grad_m, None, None, None, None


class DoraScaleFn(torch.autograd.Function):
    """DoRA's scaling step given the LoRA output (Conv2d; Linear with non-plain LoRA modules).

    ``z = y − b + s·lora`` is formed and saved (the one extra activation); ``out = result + s·lora + δ⊙z``
    (dropout off: ``z + b + δ⊙z``); the magnitude gradient is ``inv_norm · Σ G⊙z``. Tensors are in the
    promotion of ``result``'s and ``lora``'s dtypes, as in peft.
    """

    @staticmethod
    def forward(ctx, result, y_drop, lora, magnitude, inv_norm, bias, scaling: float, channel_dim: int):
        # per-channel vectors as (1, out, 1, 1) for a Conv2d (peft's magnitude already is), as they are for a Linear
        channels_last = channel_dim == result.dim() - 1
        shape = [1] * result.dim()
        shape[channel_dim] = -1
        dtype = promoted(result.dtype, lora.dtype)
        g = (inv_norm if channels_last else inv_norm.view(shape)) * magnitude
        delta = _into(dtype, torch.sub, g, 1)
        scaled_g = _into(dtype, torch.mul, g, scaling)
        z_plus_b = torch.add(result if y_drop is None else y_drop, lora, alpha=scaling)
        if bias is not None:
            bias = as_dtype(bias, dtype)
            z = z_plus_b - (bias if channels_last else bias.view(shape))
        else:
            z = z_plus_b
        if y_drop is not None:
            z_plus_b = torch.add(result, lora, alpha=scaling)  # result + s·lora
        out = torch.addcmul(z_plus_b, z, delta)
        grad_scale = delta if y_drop is not None else g  # d out / d y: g − 1 with dropout, else g
        ctx.save_for_backward(z, grad_scale, scaled_g, inv_norm)
        ctx.channels_last, ctx.dropout = channels_last, y_drop is not None
        ctx.magnitude_dtype, ctx.magnitude_shape = magnitude.dtype, magnitude.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, grad_scale, scaled_g, inv_norm = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_lora = grad_m = None
        scaled, summed = _scale_and_token_sum(grad_out, z, grad_scale, ctx.channels_last,
                                              needs[1 if ctx.dropout else 0], needs[3])
        grad_result = (grad_out if needs[0] else None) if ctx.dropout else scaled
        grad_y = scaled if ctx.dropout else None
        if needs[2]:
            grad_lora = grad_out * scaled_g
        if needs[3]:
            grad_m = _into(ctx.magnitude_dtype, torch.mul, summed, inv_norm).view(ctx.magnitude_shape)
        return grad_result, grad_y, grad_lora, grad_m, None, None, None, None
