"""A full-spectrum branch beside a spectrogram backbone (the lever of the strongest from-scratch
DCASE systems): 1-D convolutions over the high-resolution magnitude spectrum of the whole input.

A log-mel spectrogram smooths away what a fine spectrum shows: the exact frequencies of a
machine's tonal parts and their sidebands, which move when a gear wears or a shaft bends.
The branch takes the input's power spectrum at about 2 Hz resolution (Welch: the mean of
power-of-two segments, so any input length gives the same bins and the DFT is fast),
keeps 0..`high_hz`, takes the log, standardises each bin over the training set (batch
norm), and runs a small 1-D CNN over frequency. Its vector joins every frame of the
spectrogram backbone ([B, T, D] -> [B, T, D + branch_dim]), so the embedding head that
pools the frames fuses the two views and the margin loss trains both.

Everything is inside the graph, so the exported model takes raw waveform like every other
(ONNX: the DFT op; TFLite cannot take it, see trainer.export).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from edge_monitor.core.errors import ConfigError
from trainer.backbones.base import Backbone, BackboneConfig

LOG_FLOOR = 1e-10


class FullSpectrumConfig(BackboneConfig):
    """The branch: spectrum resolution and band, and the 1-D CNN's widths."""

    segment: int = Field(
        16384,
        ge=256,
        le=2**20,
        description="DFT length (a power of two); 16384 at 32 kHz gives 1.95 Hz bins",
    )
    high_hz: float = Field(
        8000.0, gt=0, description="highest frequency kept (DCASE clips are 16 kHz: 8000)"
    )
    channels: list[Annotated[int, Field(gt=0, le=512)]] = Field(
        default_factory=lambda: [32, 64, 128, 128], max_length=8,
        description="width of each conv block"
    )
    first_kernel: int = Field(64, ge=1, le=512, description="kernel of the first conv, in bins")
    first_stride: int = Field(8, ge=1, le=512, description="stride of the first conv, in bins")
    kernel: int = Field(16, ge=1, le=512, description="kernel of the later convs")
    dim: int = Field(128, gt=0, le=4096, description="size of the branch's vector")

    @model_validator(mode="after")
    def _shape(self) -> FullSpectrumConfig:
        if self.segment & (self.segment - 1):
            raise ValueError(f"segment {self.segment} is not a power of two; use e.g. 16384")
        if not self.channels:
            raise ValueError("channels is empty; give at least one block width, e.g. [32, 64]")
        return self


class FullSpectrumBranch(nn.Module):
    """wave [B, T] -> [B, dim] from the log power spectrum of the whole input."""

    def __init__(self, config: FullSpectrumConfig, sample_rate_hz: int) -> None:
        super().__init__()
        self.config = config
        self.segment = config.segment
        bin_hz = sample_rate_hz / config.segment
        self.bins = min(config.segment // 2 + 1, int(config.high_hz / bin_hz) + 1)
        self._check_length(config)
        self.norm = nn.BatchNorm1d(self.bins)
        blocks: list[nn.Module] = []
        width_in = 1
        for index, width in enumerate(config.channels):
            kernel, stride = (
                (config.first_kernel, config.first_stride) if index == 0 else (config.kernel, 1)
            )
            blocks += [
                nn.Conv1d(width_in, width, kernel, stride=stride, padding=kernel // 2),
                nn.BatchNorm1d(width),
                nn.ReLU(),
                nn.MaxPool1d(2),
            ]
            width_in = width
        self.convs = nn.Sequential(*blocks)
        self.project = nn.Sequential(
            nn.Linear(2 * width_in, config.dim), nn.BatchNorm1d(config.dim), nn.ReLU(),
            nn.Linear(config.dim, config.dim),
        )

    def _check_length(self, config: FullSpectrumConfig) -> None:
        """Refuse blocks that would pool the spectrum's bins down to nothing."""
        length = self.bins
        for index in range(len(config.channels)):
            kernel, stride = (
                (config.first_kernel, config.first_stride) if index == 0 else (config.kernel, 1)
            )
            length = ((length + 2 * (kernel // 2) - kernel) // stride + 1) // 2
        if length < 1:
            raise ConfigError(
                f"full_spectrum: {len(config.channels)} conv blocks leave none of the "
                f"{self.bins} spectrum bins; use fewer channels entries, a smaller first_stride "
                "or a higher high_hz / longer segment"
            )

    def log_spectrum(self, wave: Tensor) -> Tensor:
        """[B, bins]: log of the mean power over the input's whole segments (at least one)."""
        # no Python branch on the length: the exported graph has a dynamic time axis
        wave = nn.functional.pad(wave, (0, torch.sym_max(0, self.segment - wave.shape[-1])))
        whole = wave.shape[-1] // self.segment
        segments = wave[:, : whole * self.segment].reshape(wave.shape[0], whole, self.segment)
        # real and imaginary parts as a trailing axis: exports to ONNX's DFT without complex
        # tensors in the rest of the graph
        parts = torch.view_as_real(torch.fft.rfft(segments, dim=-1))[:, :, : self.bins]
        power = (parts * parts).sum(dim=-1).mean(dim=1)
        return torch.log(power + LOG_FLOOR)

    def forward(self, wave: Tensor) -> Tensor:
        x = self.convs(self.norm(self.log_spectrum(wave)).unsqueeze(1))
        return self.project(torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1))


class FullSpectrumFusion(Backbone):
    """A spectrogram backbone whose every frame carries the full-spectrum branch's vector."""

    def __init__(self, spectrogram: Backbone, config: FullSpectrumConfig) -> None:
        super().__init__()
        self.spectrogram = spectrogram
        self.full_spectrum = FullSpectrumBranch(config, spectrogram.sample_rate_hz)
        self.sample_rate_hz = spectrogram.sample_rate_hz
        self.attention_suffixes = spectrogram.attention_suffixes
        self.dim = spectrogram.dim + config.dim

    def config_values(self) -> dict[str, Any] | None:
        """The spectrogram backbone's config with this branch's under `full_spectrum`, the
        mapping `trainer.backbones.build_backbone` rebuilds the pair from."""
        inner = self.spectrogram.config_values()
        if inner is None:
            return None
        return {**inner, "full_spectrum": self.full_spectrum.config.model_dump()}

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Only the spectrogram backbone's: the branch starts from scratch, like the heads."""
        return self.spectrogram.pretrained_parameters()

    def forward(self, wave: Tensor) -> Tensor:
        frames = self.spectrogram(wave)
        vector = self.full_spectrum(wave)
        return torch.cat(
            [frames, vector.unsqueeze(1).expand(-1, frames.shape[1], -1)], dim=-1
        )
