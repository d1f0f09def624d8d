"""Autograd functions over the compiled kernels of :mod:`iafsr_sdk.ops`, with torch fallbacks.

The kernels take CPU float32 (and CUDA float32/float16) tensors in NCHW / row-major layout. Where the
extension is not built, or a tensor is outside what a kernel takes (bfloat16 under autocast, channels_last),
the plain torch composition runs instead; both give the same values and gradients (tests/test_fused.py).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from training.losses import identity_terms_reference


@functools.lru_cache(maxsize=1)
def kernels():
    """:mod:`iafsr_sdk.ops` when its compiled extension loads, else None."""
    try:
        from iafsr_sdk import ops
        from iafsr_sdk._ext import extension

        extension()
        return ops
    except ImportError:
        return None


def _kernel_takes(*tensors: torch.Tensor) -> bool:
    return kernels() is not None and all(
        t.dtype == torch.float32 or (t.is_cuda and t.dtype == torch.float16) for t in tensors)


class _IdentityTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f_sr: torch.Tensor, f_hr: torch.Tensor):
        result = kernels().identity_loss(f_sr.detach().contiguous(), f_hr.detach().contiguous())
        ctx.save_for_backward(result.grad_cos, result.grad_mag)
        return result.cos_loss, result.mag_loss

    @staticmethod
    def backward(ctx, grad_cos_loss: torch.Tensor, grad_mag_loss: torch.Tensor):
        grad_cos, grad_mag = ctx.saved_tensors
        return grad_cos_loss[:, None] * grad_cos + grad_mag_loss[:, None] * grad_mag, None


def identity_terms_fused(f_sr: torch.Tensor, f_hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``1 − cos θ`` and ``|‖f_sr‖ − ‖f_hr‖|`` with gradients for ``f_sr`` (``f_hr`` is a fixed
    target), from one fused kernel where it applies."""
    if f_hr.requires_grad or not _kernel_takes(f_sr, f_hr):
        return identity_terms_reference(f_sr, f_hr)
    return _IdentityTerms.apply(f_sr, f_hr)


class _PixelShufflePReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: torch.Tensor, r: int):
        x, slope = x.detach().contiguous(), slope.detach().contiguous()
        ctx.save_for_backward(x, slope)
        ctx.r = r
        return kernels().pixel_shuffle_prelu(x, slope, r)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, slope = ctx.saved_tensors
        grad_x, grad_slope = kernels().pixel_shuffle_prelu_backward(grad_out.contiguous(), x, slope, ctx.r)
        return grad_x, grad_slope, None


def pixel_shuffle_prelu(x: torch.Tensor, slope: torch.Tensor, r: int) -> torch.Tensor:
    """PixelShuffle(r) then channel-wise PReLU; one fused pass for contiguous NCHW float32 input."""
    if x.is_contiguous() and _kernel_takes(x, slope) and x.dtype == slope.dtype:
        return _PixelShufflePReLU.apply(x, slope, r)
    return F.prelu(F.pixel_shuffle(x, r), slope)
