"""Distil an ensemble's embedding geometry into the small edge student (trainer.student).

The target of a clip is the teachers' unit embeddings, each scaled by the square root of its
ensemble weight and concatenated: with weights summing to one, the cosine distance between
two such targets is the weighted sum of the teachers' own cosine distances, so a KNN bank of
student embeddings approximates the fused ensemble. The student learns it with a cosine loss
to each target plus a relational loss (the batch's pairwise cosine matrix should match the
teachers'), on normal clips and any unlabelled audio.

Teacher embeddings are computed once and stored (teachers.npz), so teacher and student runs
are decoupled; the student's front end has no weights, so its log-mel features are computed
once as well and only the network behind it is trained (random crops in frame space).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_monitor.core.atomic import atomic_path
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.embedders.base import l2_normalise
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from trainer.student import StudentNet

log = logging.getLogger(__name__)


@dataclass
class TeacherTargets:
    """Stored teacher embeddings of the training audio (rows aligned with `paths`)."""

    paths: list[str]
    names: list[str]
    weights: np.ndarray  # (T,) summing to one
    embeddings: list[np.ndarray]  # T arrays (N, dim_t), unit rows

    def targets(self) -> np.ndarray:
        """(N, sum dim_t) unit rows: sqrt(w_t) * e_t concatenated."""
        parts = [math.sqrt(float(w)) * l2_normalise(e)
                 for w, e in zip(self.weights, self.embeddings, strict=True)]
        return l2_normalise(np.concatenate(parts, axis=1))

    def save(self, path: Path) -> Path:
        arrays = {f"teacher_{i}": e for i, e in enumerate(self.embeddings)}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, paths=np.asarray(self.paths, str), names=np.asarray(self.names, str),
                     weights=self.weights.astype(np.float64), **arrays)
        return path

    def select(self, paths: Sequence[str | Path], source: str, fix: str) -> TeacherTargets:
        """The rows of `paths` (matched by absolute path), in their order; one error naming how
        many have no vector, where they were asked for (`source`) and the `fix`."""
        index = {str(Path(p).resolve()): row for row, p in enumerate(self.paths)}
        keys = [str(Path(p).resolve()) for p in paths]
        missing = [key for key in keys if key not in index]
        if missing:
            raise ConfigError(f"{source}: no teacher vector for {len(missing)} of {len(keys)} "
                              f"clip(s) (e.g. {missing[0]}); {fix}")
        rows = [index[key] for key in keys]
        return TeacherTargets(keys, self.names, self.weights, [e[rows] for e in self.embeddings])

    @classmethod
    def load(cls, path: Path) -> TeacherTargets:
        try:
            with np.load(path, allow_pickle=False) as data:
                names = data["names"].tolist()
                return cls(
                    paths=data["paths"].tolist(), names=names, weights=data["weights"],
                    embeddings=[data[f"teacher_{i}"] for i in range(len(names))],
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: not a teachers.npz written by distill ({exc}); write it "
                              "with `edge-trainer distill --teachers-only`") from exc


@dataclass(frozen=True)
class DistillSettings:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    relational_weight: float = 1.0
    crop_s: float = 8.0
    seed: int = 0
    threads: int | None = None


@torch.inference_mode()
def log_mel_features(
    model: StudentNet, paths: Sequence[str | Path], preprocess_config: PreprocessConfig
) -> list[torch.Tensor]:
    """The student's front-end output [frames, mels] of each preprocessed clip."""
    rate = model.config.sample_rate_hz
    out = []
    for path in paths:
        audio = preprocess(read_audio(path, rate), rate, preprocess_config).audio
        out.append(model.frontend(torch.from_numpy(audio)[None, :])[0])
    return out


def _crops(features: list[torch.Tensor], rows: np.ndarray, frames: int,
           rng: np.random.Generator) -> torch.Tensor:
    batch = []
    for row in rows:
        feature = features[row]
        if feature.shape[0] <= frames:
            repeats = math.ceil(frames / feature.shape[0])
            batch.append(feature.repeat(repeats, 1)[:frames])
        else:
            start = int(rng.integers(0, feature.shape[0] - frames + 1))
            batch.append(feature[start : start + frames])
    return torch.stack(batch)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cos(student, teacher) of unit rows, averaged over the batch."""
    return 1.0 - (student * teacher).sum(dim=1).mean()


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared mismatch of the batch's pairwise cosines (unit rows; dims may differ)."""
    return (student @ student.T - teacher @ teacher.T).square().mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      relational_weight: float) -> torch.Tensor:
    """1 - cos(student, teacher), plus the mismatch of the batch's pairwise cosines."""
    return cosine_loss(student, teacher) + relational_weight * relational_loss(student, teacher)


def train_student(
    model: StudentNet,
    features: list[torch.Tensor],
    targets: np.ndarray,
    settings: DistillSettings,
) -> list[float]:
    """Train the network behind the front end; returns the mean loss of each epoch."""
    if len(features) != len(targets):
        raise ConfigError(f"{len(features)} clips but {len(targets)} teacher targets")
    previous_threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(model, features, targets, settings)
    finally:
        torch.set_num_threads(previous_threads)


def _train(model: StudentNet, features: list[torch.Tensor], targets: np.ndarray,
           settings: DistillSettings) -> list[float]:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    frames = max(1, model.frontend.spectrum.num_frames(
        int(settings.crop_s * model.config.sample_rate_hz)))
    target = torch.from_numpy(targets.astype(np.float32))
    params = [p for name, p in model.named_parameters() if not name.startswith("frontend.")]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    history = []
    model.train()
    for epoch in range(settings.epochs):
        order = rng.permutation(len(features))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            mel = _crops(features, rows, frames, rng)
            loss = distillation_loss(model.embed_features(mel), target[rows],
                                     settings.relational_weight)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        history.append(total / len(order))
        log.info("epoch %d/%d: loss %.5f", epoch + 1, settings.epochs, history[-1])
    model.eval()
    return history


def feature_statistics(features: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and standard deviation of all log-mel values (the student's input scaling)."""
    stacked = torch.cat([f.reshape(-1) for f in features])
    return float(stacked.mean()), float(stacked.std().clamp_min(1e-6))
