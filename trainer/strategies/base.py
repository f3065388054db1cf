"""What every strategy shares: backbone + embedding head + margin loss on labelled crops.

A strategy owns its modules (all in one ModuleDict, so checkpoints and the optimizer see the
same set), draws its own batches from the step's generator, and returns the loss of one
micro-batch; the training loop does the rest (optimizer, AMP, accumulation, checkpoints).
"""

from __future__ import annotations

import logging
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
from trainer.labels import ClassMap, clip_labels
from trainer.recipe import Recipe
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
            recipe.backbone.name, recipe.backbone.size, recipe.backbone.checkpoint
        )
        self.sample_rate_hz = backbone.sample_rate_hz
        self.crop_samples = round(recipe.data.crop_s * backbone.sample_rate_hz)
        self.clips = self.labelled_clips()
        self.classes, targets = self.class_targets(self.clips)
        self.data = WaveSet.from_paths(
            [c.path for c in self.clips], targets, self.sample_rate_hz, context.cache_dir,
            recipe.data.trim_quiet_db,
        )
        self.augmenter = Augmenter(recipe.augment, self.noise_bank())
        self.modules = nn.ModuleDict(
            {
                "backbone": backbone,
                "head": self.new_head(backbone.dim),
                "loss": self.new_margin_loss(len(self.classes)),
            }
        )
        self.frozen_modules = freeze(backbone, recipe.backbone.freeze)
        log.info(
            "%s: %d clips, %d classes, backbone %s (%.2f M params)",
            type(self).__name__,
            len(self.clips),
            len(self.classes),
            recipe.backbone.name,
            sum(p.numel() for p in backbone.parameters()) / 1e6,
        )

    # --- building blocks subclasses reuse -------------------------------------------------
    def labelled_clips(self) -> list[Clip]:
        """The clips trained with class targets: every training clip under --data."""
        return training_clips(self.context.data_roots[:1])

    def class_targets(self, clips: list[Clip]) -> tuple[ClassMap, list[int]]:
        return clip_labels(clips, self.recipe.data.attributes)

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
        waves, targets, _ = data.crop_batch(rng, self.recipe.data.batch_size, self.crop_samples)
        batch = self.augmenter.waves(waves, rng)
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

    # --- the interface the training loop calls ----------------------------------------------
    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        """Loss of one micro-batch at optimizer step `step`, and numbers worth logging."""
        batch, targets = self.draw(rng)
        embeddings = self.embed(batch.waves, rng)
        value = self.margin_loss(embeddings, targets, batch)
        return value, {
            "loss_cls": float(value.detach()),
            **self.accuracy(embeddings, targets, batch),
        }

    def accuracy(
        self, embeddings: Tensor, targets: Tensor, batch: MixedBatch, loss: str = "loss"
    ) -> dict[str, float]:
        """Training-batch accuracy of the class head (only for batches that were not mixed)."""
        if batch.partner is not None:
            return {}
        with torch.no_grad():
            predicted = self.modules[loss].logits(embeddings).argmax(dim=1)
        return {"acc": float((predicted == targets).float().mean())}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters: the backbone's at backbone_lr, the rest at lr."""
        optim = self.recipe.optim
        backbone_ids = {id(p) for p in self.backbone.parameters()}
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

    def embedding_model(self) -> EmbeddingModel:
        """The backbone and heads a finished run keeps for embedding."""
        return EmbeddingModel(
            self.backbone, {"head": self.modules["head"]}, {"head": list(self.classes.names)}
        )
