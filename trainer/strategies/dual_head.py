"""(d) Two-stage dual-head semi-supervised fine-tuning.

Stage 1 trains the backbone and the supervised head on clips with attributes. At the switch,
every clip (with or without attributes, including extra unlabelled roots) is embedded and
clustered with k-means; the cluster ids become pseudo-labels. Stage 2 trains both heads at
once: the supervised head on labelled crops, the pseudo head on crops of all clips. The run's
embedding concatenates both heads' unit vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor

from edge_monitor.core.errors import DatasetError
from trainer.dcase_data import Clip
from trainer.labels import has_attributes
from trainer.strategies.base import EmbeddingModel, Strategy, StrategyContext
from trainer.train_data import WaveSet, training_clips

log = logging.getLogger(__name__)
PSEUDO_EMBED_CHUNK = 16
"""Clips embedded at once when computing pseudo-labels."""


class DualHead(Strategy):
    """Supervised head, then k-means pseudo-labels and a second head trained jointly."""

    def __init__(self, context: StrategyContext) -> None:
        section = context.recipe.dual_head
        assert section is not None  # the recipe validator guarantees it
        self.section = section
        super().__init__(context)
        all_clips = self.all_clips
        self.pool = WaveSet.from_paths(
            [c.path for c in all_clips],
            [-1] * len(all_clips),
            self.sample_rate_hz,
            context.cache_dir,
            self.recipe.data.trim_quiet_db,
        )
        clusters = min(section.clusters, len(all_clips))
        self.modules["pseudo_head"] = self.new_head(self.backbone.dim)
        self.modules["pseudo_loss"] = self.new_margin_loss(clusters)
        self.clusters = clusters
        self.pseudo_ready = False
        log.info(
            "dual-head: %d labelled, %d clips in the pseudo-label pool",
            len(self.clips),
            len(all_clips),
        )

    def labelled_clips(self) -> list[Clip]:
        """Clips with attributes from --data; all clips (and unlabelled roots) form the pool."""
        own = training_clips(self.context.data_roots[:1])
        extra = [c for root in self.section.unlabelled_roots for c in training_clips([Path(root)])]
        self.all_clips = own + extra
        labelled = [c for c in own if has_attributes(c)]
        if not labelled:
            raise DatasetError("dual-head: no clip under --data has attributes for stage 1")
        return labelled

    def in_joint_stage(self, step: int) -> bool:
        return step >= self.section.stage1_steps

    @torch.no_grad()
    def pseudo_labels(self) -> np.ndarray:
        """k-means cluster ids of every pool clip's supervised embedding (centre crops)."""
        was_training = self.modules.training
        self.modules.eval()
        rng = np.random.default_rng(self.recipe.optim.seed)
        vectors = []
        for start in range(0, len(self.pool), PSEUDO_EMBED_CHUNK):
            indices = np.arange(start, min(start + PSEUDO_EMBED_CHUNK, len(self.pool)))
            waves, _, _ = self.pool.crop_batch(rng, len(indices), self.crop_samples, indices)
            embedded = self.embed(waves.to(self.device), None)
            vectors.append(torch.nn.functional.normalize(embedded.float(), dim=1).cpu().numpy())
        self.train(was_training)
        kmeans = KMeans(self.clusters, n_init=4, random_state=self.recipe.optim.seed)
        return kmeans.fit_predict(np.concatenate(vectors)).astype(np.int64)

    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        batch, targets = self.draw(rng)
        supervised, metrics = self.class_loss(self.embed(batch.waves, rng), targets, batch)
        if not self.in_joint_stage(step):
            return supervised, metrics
        if not self.pseudo_ready:
            self.pool.targets = self.pseudo_labels()
            self.pseudo_ready = True
            log.info(
                "step %d: pseudo-labels from k-means over %d clips, %d clusters",
                step,
                len(self.pool),
                self.clusters,
            )
        pool_batch, pool_targets = self.draw(rng, self.pool)
        pseudo = self.margin_loss(
            self.embed(pool_batch.waves, rng, "pseudo_head"),
            pool_targets,
            pool_batch,
            "pseudo_loss",
        )
        total = supervised + self.section.pseudo_weight * pseudo
        return total, {**metrics, "loss_pseudo": float(pseudo.detach())}

    def extra_state(self) -> dict[str, Any]:
        targets = self.pool.targets if self.pseudo_ready else np.zeros(0, dtype=np.int64)
        return {"pseudo_labels": torch.from_numpy(targets.copy())}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        labels = state["pseudo_labels"].cpu().numpy()
        if labels.size:
            self.pool.targets = labels.astype(np.int64)
            self.pseudo_ready = True

    def embedding_model(self) -> EmbeddingModel:
        return EmbeddingModel(
            self.backbone,
            {"head": self.modules["head"], "pseudo_head": self.modules["pseudo_head"]},  # type: ignore[dict-item]
            {
                **self.trained_classes(),
                "pseudo_head": [f"cluster{i}" for i in range(self.clusters)],
            },
        )
