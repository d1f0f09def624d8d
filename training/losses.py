"""Loss terms of the paper (eq. 1-4) and of the baselines. Images are NCHW in [0, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 per image, ``‖SR − HR‖²`` summed over the pixels (over valid pixels where ``mask`` is given,
    shape N×1×H×W), averaged over the batch."""
    squared = (sr - hr) ** 2
    if mask is not None:
        squared = squared * mask
    return squared.flatten(1).sum(1).mean()


def identity_terms_reference(f_sr: torch.Tensor, f_hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``1 − cos θ`` (eq. 1) and ``|‖f_sr‖ − ‖f_hr‖|`` (eq. 2) in plain torch; a zero row has cos 0."""
    norm_sr = f_sr.norm(dim=1)
    norm_hr = f_hr.norm(dim=1)
    cos = (f_sr * f_hr).sum(1) / (norm_sr * norm_hr).clamp_min(1e-12)
    return 1 - cos, (norm_sr - norm_hr).abs()


def identity_terms(f_sr: torch.Tensor, f_hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 and eq. 2 per row, through the fused kernel where the extension is built."""
    from training.fused import identity_terms_fused

    return identity_terms_fused(f_sr, f_hr)


def euclidean_loss(f_sr: torch.Tensor, f_hr: torch.Tensor) -> torch.Tensor:
    """SR+Ou: squared Euclidean distance of the raw features, per row."""
    return ((f_sr - f_hr) ** 2).sum(1)


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: −log D(G(x))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
