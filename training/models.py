"""The face super-resolution generator of the paper (§II-B) and the SRGAN discriminator.

Images are NCHW RGB floats in [0, 1], in and out. The generator maps 16×16 faces to 128×128.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from iafsr_sdk.faces import HR_SIZE
from training.fused import pixel_shuffle_prelu

CHANNELS = 64


class ResidualBlock(nn.Module):
    """Conv3×3 – BN – PReLU – Conv3×3 – BN, plus the identity."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Conv3×3 (C → 4C) – PixelShuffle(2) – PReLU(C): doubles height and width."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # export and compilation trace the plain torch ops
            return self.act(self.shuffle(self.conv(x)))
        return pixel_shuffle_prelu(self.conv(x), self.act.weight, 2)


class Generator(nn.Module):
    """SRResNet-style face SR network: 9×9 head, 6 residual blocks, 3 ×2 upsampling blocks, 9×9 tail."""

    def __init__(self, residual_blocks: int = 6, upsample_blocks: int = 3):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, CHANNELS, 9, padding=4), nn.PReLU(CHANNELS))
        self.blocks = nn.Sequential(*[ResidualBlock() for _ in range(residual_blocks)])
        self.fuse = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.BatchNorm2d(CHANNELS))
        self.upsample = nn.Sequential(*[Upsample() for _ in range(upsample_blocks)])
        self.tail = nn.Conv2d(CHANNELS, 3, 9, padding=4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        head = self.head(lr)
        return self.tail(self.upsample(head + self.fuse(self.blocks(head))))


def _disc_block(in_channels: int, out_channels: int, stride: int, norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class Discriminator(nn.Module):
    """SRGAN discriminator (Ledig et al.): 8 conv blocks 64→512 with alternating strides, dense 1024, 1 logit."""

    def __init__(self, image_size: int = HR_SIZE, base_channels: int = 64):
        super().__init__()
        widths = [base_channels, base_channels, 2 * base_channels, 2 * base_channels,
                  4 * base_channels, 4 * base_channels, 8 * base_channels, 8 * base_channels]
        layers: list[nn.Module] = []
        in_channels = 3
        for index, width in enumerate(widths):
            layers += _disc_block(in_channels, width, stride=1 + index % 2, norm=index > 0)
            in_channels = width
        self.features = nn.Sequential(*layers)
        final = image_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * final * final, 1024),
            nn.LeakyReLU(0.2),
            nn.Linear(1024, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images * 2 - 1)).squeeze(1)


def fold_batch_norm(generator: Generator) -> nn.Module:
    """A copy of ``generator`` in eval mode with every BatchNorm folded into the convolution before it."""
    import copy

    folded = copy.deepcopy(generator).eval()

    def fold(sequence: nn.Sequential) -> None:
        items = list(sequence)
        kept: list[nn.Module] = []
        for module in items:
            if isinstance(module, nn.BatchNorm2d) and kept and isinstance(kept[-1], nn.Conv2d):
                conv = kept[-1]
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                with torch.no_grad():
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(module.running_mean)
                    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - module.running_mean) * scale + module.bias)
                continue
            kept.append(module)
        sequence._modules.clear()
        for index, module in enumerate(kept):
            sequence.add_module(str(index), module)

    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            fold(module)
    return folded


def save_generator(path, generator: Generator, config: dict) -> None:
    """Write the generator's weights with the config of the run that trained it (method, step, ...)."""
    torch.save({"generator": generator.state_dict(), "config": dict(config)}, path)


def sha256_of(path) -> str:
    """Hex SHA-256 of a file: how weights files, and the models exported from them, are identified."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_generator(path) -> tuple[Generator, dict]:
    """Read a file written by :func:`save_generator`: the generator in eval mode and its config."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    generator = Generator()
    generator.load_state_dict(saved["generator"])
    return generator.eval(), saved["config"]
