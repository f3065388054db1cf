"""(e) TATS: teacher-student training over several data roots (e.g. several DCASE years).

The student learns the auxiliary classes of every root on augmented crops and is pulled
towards an EMA teacher's embedding of the same crop before augmentation. The teacher, a
smoothed average of the student, is what the run keeps for embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.dcase_data import Clip
from trainer.labels import class_name
from trainer.strategies.base import EmbeddingModel, StrategyContext
from trainer.strategies.ema import TeacherStrategy, ema_update, make_teacher
from trainer.train_data import training_clips


class TeacherStudent(TeacherStrategy):
    """Margin loss on every root's classes plus cosine consistency with an EMA teacher."""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        section = self.recipe.tats
        assert section is not None  # the recipe validator guarantees it
        self.decay = section.ema_decay
        self.weight = section.consistency_weight
        self.teacher = nn.ModuleDict(
            {"backbone": make_teacher(self.backbone), "head": make_teacher(self.modules["head"])}
        )

    def labelled_clips(self) -> list[Clip]:
        self.root_of: list[int] = []
        clips: list[Clip] = []
        for index, root in enumerate(self.context.data_roots):
            found = training_clips([root])
            clips += found
            self.root_of += [index] * len(found)
        return clips

    def class_names(
        self, clips: list[Clip], attributes: Sequence[str] | None, source: str
    ) -> list[str]:
        """Classes stay apart per root: the same attribute names mean other machines in
        another year's data."""
        return [
            f"root{root}:{class_name(c, attributes, source)}"
            for c, root in zip(clips, self.root_of, strict=True)
        ]

    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        waves, targets, _ = self.data.crop_batch(
            rng, self.recipe.data.batch_size, self.crop_samples
        )
        clean = waves.to(self.device)
        batch = self.augmenter.waves(waves, rng)
        batch.waves = batch.waves.to(self.device)
        targets = targets.to(self.device)
        student = self.embed(batch.waves, rng)
        classification, metrics = self.class_loss(student, targets, batch)
        with torch.no_grad():
            teacher = self.teacher["head"](self.teacher["backbone"](clean))
        if batch.partner is not None:
            partner = torch.from_numpy(batch.partner).to(self.device)
            teacher = batch.lam * teacher + (1.0 - batch.lam) * teacher[partner]
        consistency = (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()
        total = classification + self.weight * consistency
        return total, {**metrics, "loss_consistency": float(consistency.detach())}

    def after_step(self, step: int) -> None:
        ema_update(self.teacher["backbone"], self.backbone, self.decay)
        ema_update(self.teacher["head"], self.modules["head"], self.decay)

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"], strict=True)

    def embedding_model(self) -> EmbeddingModel:
        return EmbeddingModel(
            self.teacher["backbone"],
            {"head": self.teacher["head"]},  # type: ignore[dict-item]
            self.trained_classes(),
        )
