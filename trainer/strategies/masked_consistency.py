"""(f) Masked-frame consistency (for HuBERT, usable with any backbone).

About 30% of the backbone's output frames are masked in spans: the waveform samples under
those frames are zeroed for the student, while an EMA teacher sees the clean crop. The student
must predict the teacher's features at the masked frames (MSE), which teaches it what a
normal machine sounds like from context, alongside the usual margin loss on the embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from trainer.strategies.base import StrategyContext
from trainer.strategies.ema import TeacherStrategy, ema_update, make_teacher


def span_mask(
    rng: np.random.Generator, rows: int, frames: int, ratio: float, span: int
) -> np.ndarray:
    """Boolean [rows, frames]: random spans of `span` frames until `ratio` of frames is masked."""
    mask = np.zeros((rows, frames), dtype=bool)
    target = max(1, round(ratio * frames))
    span = min(span, frames)
    for row in range(rows):
        while mask[row].sum() < target:
            start = int(rng.integers(0, frames - span + 1))
            mask[row, start : start + span] = True
    return mask


def mask_waves(waves: Tensor, frame_mask: np.ndarray) -> Tensor:
    """Zero the samples under masked frames (frames spread evenly over the samples)."""
    rows, samples = waves.shape
    frames = frame_mask.shape[1]
    edges = np.linspace(0, samples, frames + 1).round().astype(int)
    sample_mask = np.zeros((rows, samples), dtype=bool)
    for row, frame in zip(*np.nonzero(frame_mask), strict=True):
        sample_mask[row, edges[frame] : edges[frame + 1]] = True
    return waves.masked_fill(torch.from_numpy(sample_mask).to(waves.device), 0.0)


class MaskedConsistency(TeacherStrategy):
    """MSE to an EMA teacher's features at masked frames, plus the margin loss."""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        section = self.recipe.masked
        assert section is not None  # the recipe validator guarantees it
        self.section = section
        self.teacher = make_teacher(self.backbone)

    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        section = self.section
        waves, targets, _ = self.data.crop_batch(
            rng, self.recipe.data.batch_size, self.crop_samples
        )
        batch = self.augmenter.waves(waves, rng, allow_mixup=False)
        clean = batch.waves.to(self.device)
        targets = targets.to(self.device)
        with torch.no_grad():
            teacher_frames = self.teacher(clean)
        frame_mask = span_mask(
            rng, clean.shape[0], teacher_frames.shape[1], section.mask_ratio, section.span_frames
        )
        student_frames = self.backbone(mask_waves(clean, frame_mask))
        mask = torch.from_numpy(frame_mask).to(self.device)
        consistency = F.mse_loss(student_frames[mask].float(), teacher_frames[mask].float())
        classification, metrics = self.class_loss(
            self.modules["head"](student_frames), targets, batch
        )
        total = (
            section.consistency_weight * consistency
            + section.classification_weight * classification
        )
        return total, {
            **metrics,
            "loss_masked_mse": float(consistency.detach()),
            "masked_fraction": float(mask.float().mean()),
        }

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.backbone, self.section.ema_decay)

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"], strict=True)
