"""Augmentations from the technical reports: noise at -5..15 dB SNR, time stretch, mixup, masking.

Waveform augmentations act on a batch [B, T] before the backbone (its front end is inside the
model); the SpecAugment-style masks act on the backbone's frame features [B, frames, dim],
which for every backbone here is a time x channel map. All randomness comes from the numpy
generator of the step, so a resumed run augments exactly as the interrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from trainer.recipe import AugmentSection

POWER_FLOOR = 1e-10


def mix_noise(waves: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """waves + noise scaled so each row's signal-to-noise ratio is `snr_db` [B] (in dB)."""
    signal_power = waves.pow(2).mean(dim=1).clamp(min=POWER_FLOOR)
    noise_power = noise.pow(2).mean(dim=1).clamp(min=POWER_FLOOR)
    gain = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return waves + gain[:, None] * noise


def time_stretch(wave: Tensor, rate: float) -> Tensor:
    """Play one row [T] `rate` times faster (resampling: tempo and pitch move together, as a
    machine running faster or slower would), then tile or crop back to T samples."""
    length = wave.shape[0]
    stretched_length = max(2, round(length / rate))
    stretched = F.interpolate(
        wave[None, None, :], size=stretched_length, mode="linear", align_corners=False
    )[0, 0]
    if stretched_length < length:
        stretched = stretched.repeat(length // stretched_length + 1)
    return stretched[:length]


def mixup(
    waves: Tensor, rng: np.random.Generator, alpha: float
) -> tuple[Tensor, np.ndarray, float]:
    """Blend each row with a partner: returns mixed waves, partner indices and the weight lam
    of the original rows (the loss becomes lam * L(y) + (1 - lam) * L(y_partner))."""
    lam = float(rng.beta(alpha, alpha))
    partner = rng.permutation(waves.shape[0])
    mixed = lam * waves + (1.0 - lam) * waves[torch.from_numpy(partner)]
    return mixed, partner, lam


def mask_features(
    frames: Tensor,
    rng: np.random.Generator,
    time_masks: int,
    max_time_fraction: float,
    feature_masks: int,
    max_feature_fraction: float,
) -> Tensor:
    """Zero random spans of frames and of channels in each row of [B, frames, dim]."""
    batch, length, dim = frames.shape
    keep = torch.ones(batch, length, dim, dtype=frames.dtype, device=frames.device)
    for row in range(batch):
        for axis, masks, fraction, size in (
            (1, time_masks, max_time_fraction, length),
            (2, feature_masks, max_feature_fraction, dim),
        ):
            for _ in range(masks):
                width = int(rng.integers(0, int(fraction * size) + 1))
                if width == 0:
                    continue
                start = int(rng.integers(0, size - width + 1))
                if axis == 1:
                    keep[row, start : start + width, :] = 0
                else:
                    keep[row, :, start : start + width] = 0
    return frames * keep


@dataclass
class MixedBatch:
    """Augmented waves; with mixup, the partner rows and the weight of the original targets;
    `clips` is each row's clip index in the strategy's data, where the batch was drawn from it."""

    waves: Tensor
    partner: np.ndarray | None = None
    lam: float = 1.0
    clips: np.ndarray | None = None


class Augmenter:
    """Applies a recipe's augment section; noise comes from a bank of noise clips when given,
    else it is white Gaussian noise."""

    def __init__(self, config: AugmentSection, noise_bank: list[np.ndarray] | None = None) -> None:
        self.config = config
        self.noise_bank = noise_bank or []

    def _noise(self, rng: np.random.Generator, rows: int, length: int) -> Tensor:
        if not self.noise_bank:
            return torch.from_numpy(rng.standard_normal((rows, length)).astype(np.float32))
        out = np.empty((rows, length), dtype=np.float32)
        for row in range(rows):
            clip = self.noise_bank[int(rng.integers(0, len(self.noise_bank)))]
            if clip.shape[0] < length:
                clip = np.tile(clip, length // clip.shape[0] + 1)
            start = int(rng.integers(0, clip.shape[0] - length + 1))
            out[row] = clip[start : start + length]
        return torch.from_numpy(out)

    def waves(
        self, waves: Tensor, rng: np.random.Generator, allow_mixup: bool = True
    ) -> MixedBatch:
        """Noise, stretch (per row, each with its probability), then mixup (per batch)."""
        cfg = self.config
        waves = waves.clone()
        rows, length = waves.shape
        noisy = rng.random(rows) < cfg.noise_prob
        if noisy.any():
            index = torch.from_numpy(np.flatnonzero(noisy))
            snr = torch.from_numpy(
                rng.uniform(*cfg.snr_db, size=int(noisy.sum())).astype(np.float32)
            )
            waves[index] = mix_noise(waves[index], self._noise(rng, len(index), length), snr)
        for row in np.flatnonzero(rng.random(rows) < cfg.stretch_prob):
            waves[row] = time_stretch(waves[row], float(rng.uniform(*cfg.stretch)))
        if allow_mixup and rows > 1 and rng.random() < cfg.mixup_prob:
            mixed, partner, lam = mixup(waves, rng, cfg.mixup_alpha)
            return MixedBatch(mixed, partner, lam)
        return MixedBatch(waves)

    def features(self, frames: Tensor, rng: np.random.Generator) -> Tensor:
        """SpecAugment-style masks on the frame features, with the recipe's probability."""
        cfg = self.config
        if rng.random() >= cfg.mask_prob:
            return frames
        return mask_features(
            frames, rng, cfg.time_masks, cfg.max_time_mask, cfg.feature_masks, cfg.max_feature_mask
        )
