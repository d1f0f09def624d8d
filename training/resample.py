"""Torch versions of the shared resampling rule in :mod:`iafsr_sdk.faces` (same weight matrices).

Tensors are NCHW, float, RGB in [0, 1]. Both functions are differentiable.
"""
from __future__ import annotations

import torch

from iafsr_sdk.faces import LR_SIZE, resize_weights


def _weights(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(resize_weights(in_size, out_size).copy()).to(device=like.device, dtype=like.dtype)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize of NCHW images to size×size, as :func:`iafsr_sdk.faces.resize` on floats."""
    if images.dim() != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    result = images
    if width != size:
        result = result @ _weights(width, size, images).T
    if height != size:
        result = _weights(height, size, images) @ result
    return result


def degrade(hr_faces: torch.Tensor, size: int = LR_SIZE) -> torch.Tensor:
    """Low-resolution faces as a camera stores them, in [0, 1] on the 8-bit grid.

    The same computation as :func:`iafsr_sdk.faces.degrade` on uint8 faces, rounded to 8 bits after each
    axis as there; the two agree to within one grey level (float rounding of ties).
    """
    if hr_faces.dim() != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(hr_faces.shape)}")
    height, width = hr_faces.shape[-2:]
    with torch.no_grad():
        levels = hr_faces * 255
        levels = (levels @ _weights(width, size, levels).T).round().clamp(0, 255)
        levels = (_weights(height, size, levels) @ levels).round().clamp(0, 255)
        return levels / 255
