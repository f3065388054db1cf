"""Building blocks shared by the transformer backbones (BEATs, HuBERT, EAT/SSLAM).

The weight-normalised positional convolution keeps the `weight_g` / `weight_v` parameter names
of `torch.nn.utils.weight_norm`, which is what the official checkpoints store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ActivationName = Literal["gelu", "gelu_accurate", "relu"]


def activation(name: ActivationName) -> Callable[[Tensor], Tensor]:
    """The feed-forward activation named in a checkpoint config."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_accurate":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class WeightNormConv1d(nn.Module):
    """Conv1d whose kernel is g * v / ||v|| (norm over all but the kernel-tap axis, as dim=2)."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=(4.0 / (kernel_size * channels)) ** 0.5)
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))
        self.groups = groups
        self.padding = kernel_size // 2
        self.trim = 1 if kernel_size % 2 == 0 else 0  # 'same' length for even kernels

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, T] -> [B, C, T]."""
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)
        weight = self.weight_v * (self.weight_g / norm)
        y = F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)
        return y[..., : y.shape[-1] - self.trim]


def scale_gradient(x: Tensor, ratio: float) -> Tensor:
    """Identity forward, gradient times `ratio` (BEATs' layer-wise gradient decay)."""
    return x * ratio + x.detach() * (1.0 - ratio)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero a whole sample's residual branch with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= rate
    return x * keep.to(x.dtype) / (1.0 - rate)


def layer_dropped(rate: float, training: bool) -> bool:
    """Whether LayerDrop skips this layer in this step (never at inference)."""
    return training and rate > 0.0 and float(torch.rand(())) < rate
