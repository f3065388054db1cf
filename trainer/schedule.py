"""Learning rate: linear warm-up, then cosine decay to a floor.

Warm-up keeps the first updates of a freshly initialised head from wrecking pretrained
backbone weights; the cosine tail lets the last steps settle.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base LR at `step` (0-based): 0 -> 1 over warm-up, then cosine to min."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int, min_ratio: float
) -> LambdaLR:
    """A scheduler stepping once per optimizer step; its state dict resumes with the run."""
    return LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, min_ratio),
    )
