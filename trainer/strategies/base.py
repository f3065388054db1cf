"""What every strategy shares: backbone + embedding head + margin loss on labelled crops.

With `data.tasks` (multi-task heads) each task has its own margin loss module (`loss_<task>`)
on the same embedding and the class loss is their mean; without it there is one (`loss`).

A strategy owns its modules (all in one ModuleDict, so checkpoints and the optimizer see the
same set), draws its own batches from the step's generator, and returns the loss of one
micro-batch; the training loop does the rest (optimizer, AMP, accumulation, checkpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edge_monitor.core.errors import ConfigError
from trainer.augment import Augmenter, MixedBatch
from trainer.backbones import Backbone, build_backbone
from trainer.dcase_data import Clip
from trainer.heads import EmbeddingHead, build_margin_loss
from trainer.labels import ClassMap, class_name, targets_from_names
from trainer.recipe import COMBINED_TASK, Recipe
from trainer.strategies.distillation import Distillation
from trainer.train_data import WaveSet, training_clips

log = logging.getLogger(__name__)


def freeze(backbone: nn.Module, prefixes: list[str]) -> list[nn.Module]:
    """Stop training the backbone modules whose names start with a prefix; return them so
    `train()` keeps them in eval mode (their batch-norm statistics stay pretrained)."""
    if not prefixes:
        return []
    # a module is frozen when its name followed by "." starts with a prefix: "features.1."
    # names features.1 and its children, "features.1" also features.10 ... features.16
    modules = [(f"{name}.", m) for name, m in backbone.named_modules() if name]
    unused = [p for p in prefixes if not any(n.startswith(p) for n, _ in modules)]
    if unused:
        raise ConfigError(
            f"backbone.freeze: {unused} match no module of the backbone; use prefixes of "
            f"its module names such as {[n for n, _ in modules[:3]]}"
        )
    frozen = [m for n, m in modules if n.startswith(tuple(prefixes))]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return frozen


@dataclass
class StrategyContext:
    """Inputs every strategy is built from; `data_roots[0]` is the --data root."""

    recipe: Recipe
    data_roots: list[Path]
    cache_dir: Path


@dataclass
class EmbeddingModel:
    """What a finished run keeps for embedding: a backbone and the heads whose outputs form the
    embedding (concatenated after L2 normalisation each), plus the class names trained on."""

    backbone: Backbone
    heads: dict[str, EmbeddingHead]
    classes: dict[str, list[str]] = field(default_factory=dict)


class Strategy:
    """Supervised fine-tuning with the auxiliary classes; subclasses add what their method needs."""

    def __init__(self, context: StrategyContext) -> None:
        self.context = context
        self.recipe = context.recipe
        self.device = torch.device("cpu")
        recipe = self.recipe
        backbone = build_backbone(
            recipe.backbone.name,
            recipe.backbone.size,
            recipe.backbone.checkpoint,
            recipe.backbone.full_spectrum,
        )
        self.sample_rate_hz = backbone.sample_rate_hz
        self.crop_samples = round(recipe.data.crop_s * backbone.sample_rate_hz)
        self.clips = self.labelled_clips()
        self.classes, targets = self.class_targets(self.clips)
        # data.tasks: one class map per task, and a [clips, tasks] target matrix
        self.task_classes: dict[str, ClassMap] = {}
        if recipe.data.tasks is not None:
            self.task_classes, targets = self.task_targets(self.clips, recipe.data.tasks)
        self.data = WaveSet.from_paths(
            [c.path for c in self.clips], targets, self.sample_rate_hz, context.cache_dir,
            recipe.data.trim_quiet_db,
        )
        self.augmenter = Augmenter(recipe.augment, self.noise_bank())
        losses = {
            loss_module(task): self.new_margin_loss(len(classes))
            for task, classes in self.task_classes.items()
        } or {"loss": self.new_margin_loss(len(self.classes))}
        distill = recipe.distill
        extra = {} if distill is None else {
            "distill": Distillation(distill, [c.path for c in self.clips], recipe.head.embed_dim)
        }
        self.modules = nn.ModuleDict(
            {"backbone": backbone, "head": self.new_head(backbone.dim), **losses, **extra}
        )
        self.frozen_modules = freeze(backbone, recipe.backbone.freeze)
        counts = {task: len(c) for task, c in self.task_classes.items()} or len(self.classes)
        log.info(
            "%s: %d clips, classes %s, backbone %s (%.2f M params)",
            type(self).__name__,
            len(self.clips),
            counts,
            recipe.backbone.name,
            sum(p.numel() for p in backbone.parameters()) / 1e6,
        )

    # --- building blocks subclasses reuse -------------------------------------------------
    def labelled_clips(self) -> list[Clip]:
        """The clips trained with class targets: every training clip under --data."""
        return training_clips(self.context.data_roots[:1])

    def class_names(
        self, clips: list[Clip], attributes: Sequence[str] | None, source: str
    ) -> list[str]:
        """Each clip's class over `attributes` (all of a clip's when None); `source` is the
        recipe key that asked, for the error when a clip lacks one."""
        return [class_name(clip, attributes, source) for clip in clips]

    def class_targets(self, clips: list[Clip]) -> tuple[ClassMap, list[int]]:
        """The combined class (machine, section, data.attributes) of each clip."""
        return targets_from_names(
            self.class_names(clips, self.recipe.data.attributes, "data.attributes")
        )

    def task_targets(
        self, clips: list[Clip], tasks: Sequence[str]
    ) -> tuple[dict[str, ClassMap], np.ndarray]:
        """Each task's class map and the [clips, tasks] matrix of class indices."""
        maps: dict[str, ClassMap] = {}
        columns: list[list[int]] = []
        for task in tasks:
            if task == COMBINED_TASK:
                maps[task], column = self.class_targets(clips)
            else:
                maps[task], column = targets_from_names(
                    self.class_names(clips, [task], "data.tasks")
                )
            columns.append(column)
        return maps, np.asarray(columns, dtype=np.int64).T

    def noise_bank(self) -> list[np.ndarray]:
        """Noise clips for the noise augmentation; none means white noise."""
        return []

    def new_head(self, dim: int) -> EmbeddingHead:
        head = self.recipe.head
        return EmbeddingHead(dim, head.attention_dim, head.hidden_dim, head.embed_dim)

    def new_margin_loss(self, classes: int) -> nn.Module:
        head = self.recipe.head
        return build_margin_loss(
            head.loss, head.embed_dim, classes, head.scale, head.margin, head.subclusters
        )

    @property
    def backbone(self) -> Backbone:
        return self.modules["backbone"]  # type: ignore[return-value]

    def to(self, device: torch.device) -> Strategy:
        self.device = device
        self.modules.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        self.modules.train(mode)
        for module in self.frozen_modules:
            module.eval()

    def draw(
        self, rng: np.random.Generator, data: WaveSet | None = None
    ) -> tuple[MixedBatch, Tensor]:
        """An augmented batch of crops and its targets, on the device."""
        data = data or self.data
        waves, targets, clips = data.crop_batch(
            rng, self.recipe.data.batch_size, self.crop_samples
        )
        batch = self.augmenter.waves(waves, rng)
        batch.clips = clips if data is self.data else None
        batch.waves = batch.waves.to(self.device, non_blocking=True)
        return batch, targets.to(self.device)

    def embed(self, waves: Tensor, rng: np.random.Generator | None, head: str = "head") -> Tensor:
        """Backbone, feature masking when `rng` is given, then the named head."""
        frames = self.backbone(waves)
        if rng is not None:
            frames = self.augmenter.features(frames, rng)
        return self.modules[head](frames)

    def margin_loss(
        self, embeddings: Tensor, targets: Tensor, batch: MixedBatch, loss: str = "loss"
    ) -> Tensor:
        """The margin loss, split over the two sources of each row when the batch was mixed."""
        criterion = self.modules[loss]
        value = criterion(embeddings, targets)
        if batch.partner is None:
            return value
        partner = torch.from_numpy(batch.partner).to(targets.device)
        return batch.lam * value + (1.0 - batch.lam) * criterion(embeddings, targets[partner])

    def class_loss(
        self, embeddings: Tensor, targets: Tensor, batch: MixedBatch
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss on the recipe's classes and its log: the one margin loss, or with
        data.tasks the mean of each task's (`targets` then holds one column per task)."""
        if not self.task_classes:
            value = self.margin_loss(embeddings, targets, batch)
            return value, {
                "loss_cls": float(value.detach()),
                **self.accuracy(embeddings, targets, batch),
            }
        values: list[Tensor] = []
        metrics: dict[str, float] = {}
        for column, task in enumerate(self.task_classes):
            name = loss_module(task)
            value = self.margin_loss(embeddings, targets[:, column], batch, name)
            values.append(value)
            metrics[name] = float(value.detach())
            accuracy = self.accuracy(embeddings, targets[:, column], batch, name)
            metrics.update({f"acc_{task}": v for v in accuracy.values()})
        total = torch.stack(values).mean()
        return total, {"loss_cls": float(total.detach()), **metrics}

    def distilled(
        self, value: Tensor, logs: dict[str, float], embeddings: Tensor, batch: MixedBatch
    ) -> tuple[Tensor, dict[str, float]]:
        """`value` plus the recipe's distillation term (section `distill`) on an unmixed batch
        of training clips; unchanged without the section or on a mixed batch, whose waves
        are no clip the teachers embedded."""
        if "distill" not in self.modules or batch.partner is not None or batch.clips is None:
            return value, logs
        distillation: Distillation = self.modules["distill"]  # type: ignore[assignment]
        term = distillation(embeddings, batch.clips)
        return value + distillation.weight * term, {**logs, "loss_distill": float(term.detach())}

    # --- the interface the training loop calls ----------------------------------------------
    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        """Loss of one micro-batch at optimizer step `step`, and numbers worth logging."""
        batch, targets = self.draw(rng)
        embeddings = self.embed(batch.waves, rng)
        value, logs = self.class_loss(embeddings, targets, batch)
        return self.distilled(value, logs, embeddings, batch)

    def accuracy(
        self, embeddings: Tensor, targets: Tensor, batch: MixedBatch, loss: str = "loss"
    ) -> dict[str, float]:
        """Training-batch accuracy of one class head (only for batches that were not mixed)."""
        if batch.partner is not None:
            return {}
        with torch.no_grad():
            predicted = self.modules[loss].logits(embeddings).argmax(dim=1)
        return {"acc": float((predicted == targets).float().mean())}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: the backbone's pretrained ones at backbone_lr, the rest (heads,
        a full-spectrum branch) at lr."""
        optim = self.recipe.optim
        backbone_ids = {id(p) for p in self.backbone.pretrained_parameters()}
        trainable = [(n, p) for n, p in self.modules.named_parameters() if p.requires_grad]
        backbone = [p for _, p in trainable if id(p) in backbone_ids]
        rest = [p for _, p in trainable if id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": optim.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": optim.backbone_lr or optim.lr})
        return groups

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA teachers update here)."""

    def extra_state(self) -> dict[str, Any]:
        """State besides the modules that a resume needs (tensors, numbers, lists only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def trained_classes(self, head: str = "head") -> dict[str, list[str]]:
        """The class names `head` was trained on, for classes.json: under `head`, or with
        data.tasks under `head:<task>` for each task."""
        if not self.task_classes:
            return {head: list(self.classes.names)}
        return {f"{head}:{task}": list(c.names) for task, c in self.task_classes.items()}

    def embedding_model(self) -> EmbeddingModel:
        """The backbone and heads a finished run keeps for embedding."""
        return EmbeddingModel(self.backbone, {"head": self.modules["head"]}, self.trained_classes())


def loss_module(task: str) -> str:
    """The strategy module that holds one data.tasks entry's margin loss."""
    return f"loss_{task}"
