"""The edge student: a small log-mel CNN that maps a waveform to a unit embedding.

Its front end (trainer.frontend.LogMel, a fixed conv1d DFT) has no weights to learn, so
distillation caches the log-mel features once and trains only the network behind it; the
exported graph still starts from the raw waveform. A file stores `{"cfg", "model"}` like the
backbones (no pickled classes), so the student rebuilds itself from its file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from edge_monitor.core.atomic import atomic_path
from trainer.backbones.base import BackboneConfig, parse_config
from trainer.backbones.checkpoint import as_state_dict, load_strict, read_torch_file
from trainer.errors import CheckpointError
from trainer.export import TorchEmbedder, unit
from trainer.frontend import LogMel

STUDENT_NAME = "student"


class StudentConfig(BackboneConfig):
    """Front end and network sizes of the student (defaults: ~0.4M parameters)."""

    sample_rate_hz: int = Field(16000, gt=0)
    window_s: float = Field(10.0, gt=0)
    n_fft: int = Field(512, gt=0, description="DFT size; 512 keeps the front end cheap")
    hop: int = Field(320, gt=0, description="20 ms at 16 kHz")
    n_mels: int = Field(64, gt=0)
    channels: tuple[int, ...] = Field((16, 32, 64, 128), min_length=1)
    dim: int = Field(256, gt=0, description="embedding size (the teacher's)")
    mel_mean: float = Field(0.0, description="log-mel standardisation, set from training data")
    mel_std: float = Field(1.0, gt=0)


def _block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class StudentNet(nn.Module):
    """Log-mel [B, frames, mels] -> unit embedding [B, dim]; `forward` takes the waveform."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogMel(config.sample_rate_hz, config.n_fft, config.hop, config.n_mels)
        blocks, in_channels = [], 1
        for channels in config.channels:
            blocks.append(_block(in_channels, channels, 2))
            in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.projection = nn.Linear(2 * in_channels, config.dim)

    def embed_features(self, mel: Tensor) -> Tensor:
        x = (mel - self.config.mel_mean) / self.config.mel_std
        x = self.blocks(x.unsqueeze(1))  # [B, C, frames', mels']
        x = x.mean(dim=3)  # over mel
        pooled = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)
        return unit(self.projection(pooled))

    def forward(self, wave: Tensor) -> Tensor:
        return self.embed_features(self.frontend(wave))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_student(model: StudentNet, path: Path) -> Path:
    """Write `{"cfg", "model"}` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"cfg": model.config.model_dump(mode="json"), "model": model.state_dict()}, tmp)
    return path


def load_student(path: str | Path) -> StudentNet:
    """Rebuild a student from its file, loading every weight strictly."""
    path = Path(path)
    content = read_torch_file(path)
    if not isinstance(content, Mapping) or set(content) != {"cfg", "model"}:
        raise CheckpointError(
            f"{path}: a student file is a dict with 'cfg' and 'model'; pass a file written by "
            "`edge-trainer distill`"
        )
    config = parse_config(StudentConfig, content["cfg"], f"{path} cfg", CheckpointError)
    model = StudentNet(config)
    load_strict(model, as_state_dict(content["model"], path, "'model'"), path,
                fix="pass a student file written by `edge-trainer distill`")
    return model.eval()


def student_embedder(model: StudentNet, name: str = STUDENT_NAME) -> TorchEmbedder:
    c = model.config
    return TorchEmbedder(model, name, c.sample_rate_hz, c.window_s, c.dim)


def build_student(values: Mapping[str, Any] | None = None) -> StudentNet:
    return StudentNet(parse_config(StudentConfig, dict(values or {}), "student config",
                                   CheckpointError))
