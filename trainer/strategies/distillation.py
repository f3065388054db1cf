"""Ensemble distillation into a fine-tuned model: the teachers' stored clip embeddings as one
more loss on a strategy's embedding (recipe section `distill`).

`edge-trainer distill` trains the small from-scratch student on the teachers alone. This term
instead lets a pretrained backbone (AudioSet mn04) keep its auxiliary classes and learn the
ensemble's geometry on top, so one model can carry what several seeds or models agree on.
The embedding is pulled toward the teachers two ways: its pairwise cosines within the batch
should match theirs (the geometry a KNN bank sees, whatever the dimensions), and a linear map
of it should point where the clip's target points (trainer.distill.TeacherTargets.targets).
The map is training-only: the exported embedding is the head's output as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edge_monitor.core.errors import ConfigError
from trainer.distill import TeacherTargets, cosine_loss, relational_loss
from trainer.recipe import DistillSection


class Distillation(nn.Module):
    """The distillation term for clips of the training set, by clip index."""

    def __init__(self, section: DistillSection, paths: Sequence[Path], embed_dim: int) -> None:
        super().__init__()
        targets = TeacherTargets.load(section.teachers).select(
            paths, f"distill.teachers {section.teachers}",
            "write it again with `edge-trainer distill --teachers-only` on the same --data",
        ).targets()
        if not np.isfinite(targets).all():
            raise ConfigError(f"distill.teachers {section.teachers}: holds non-finite vectors; "
                              "write it again with `edge-trainer distill --teachers-only`")
        self.targets = torch.from_numpy(targets.astype(np.float32))
        self.projection = nn.Linear(embed_dim, targets.shape[1])
        self.weight = section.weight
        self.relational_weight = section.relational_weight

    def forward(self, embeddings: Tensor, clips: np.ndarray) -> Tensor:
        """Loss of a batch's embeddings [B, E] against the targets of its clip indices."""
        target = self.targets[torch.from_numpy(clips)].to(embeddings.device)
        student = nn.functional.normalize(embeddings, dim=1)
        projected = nn.functional.normalize(self.projection(embeddings), dim=1)
        return cosine_loss(projected, target) + self.relational_weight * relational_loss(
            student, target
        )
