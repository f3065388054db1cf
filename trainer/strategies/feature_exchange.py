"""Feature exchange: the two branches of a full-spectrum backbone must each tell the class.

With one machine type the auxiliary task is easy (a few dozen operating conditions), and an
easy task lets a model lean on whichever view separates the classes first. Here each batch
also trains on exchanged examples: the spectrogram frames of one clip joined with the
full-spectrum vector of another. Their class is the pair (class of the spectrogram part,
class of the spectrum part) among C x C pair classes, and an original clip is the pair
(c, c). To place an exchanged example the model must read the class from both views on
their own, so each learns what makes a condition sound as it does. Mixed (mixup) batches
train on the originals only: their parts would carry four classes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from trainer.backbones.full_spectrum import FullSpectrumFusion
from trainer.strategies.base import Strategy, StrategyContext


class FeatureExchange(Strategy):
    """Full fine-tuning of a full-spectrum backbone with exchanged branch features."""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        section = self.recipe.feature_exchange
        # the recipe validator guarantees both: the section and a full-spectrum branch
        assert section is not None and isinstance(self.backbone, FullSpectrumFusion)
        self.weight = section.weight

    def new_margin_loss(self, classes: int) -> nn.Module:
        return super().new_margin_loss(classes * classes)

    def pair_targets(self, spectrogram: Tensor, spectrum: Tensor) -> Tensor:
        return spectrogram * len(self.classes) + spectrum

    def exchange(self, frames: Tensor, order: np.ndarray) -> Tensor:
        """Frames whose full-spectrum part comes from the batch rows in `order`."""
        split = self.backbone.spectrogram.dim
        return torch.cat([frames[..., :split], frames[order][..., split:]], dim=-1)

    def loss(self, step: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, float]]:
        batch, targets = self.draw(rng)
        frames = self.augmenter.features(self.backbone(batch.waves), rng)
        pairs = self.pair_targets(targets, targets)
        embeddings = self.modules["head"](frames)
        value = self.margin_loss(embeddings, pairs, batch)
        logs = {"loss_cls": float(value.detach())}
        if batch.partner is None:
            order = rng.permutation(len(targets))
            swapped = self.modules["head"](self.exchange(frames, order))
            exchanged = self.modules["loss"](swapped, self.pair_targets(targets, targets[order]))
            logs["loss_exchange"] = float(exchanged.detach())
            value = (value + self.weight * exchanged) / (1.0 + self.weight)
        return self.distilled(value, logs, embeddings, batch)
