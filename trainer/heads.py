"""Pooling, embedding layers and margin losses on top of a backbone's frame features.

The embedding the scorer sees is the output of the second FC layer: the margin losses pull
clips of one operating condition (class) together on the unit sphere and push conditions
apart, so an unseen fault lands far from every normal neighbour in the memory bank.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

STD_FLOOR = 1e-5


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over frames: [B, T, D] -> [B, 2D]."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1)
        )

    def forward(self, frames: Tensor) -> Tensor:
        weights = torch.softmax(self.attention(frames).float(), dim=1)  # [B, T, 1]
        x = frames.float()
        mean = (weights * x).sum(dim=1)
        # two-pass variance: E[x^2] - E[x]^2 leaves rounding noise for a feature that is
        # constant over frames (the full-spectrum branch's), and its square root amplifies it
        variance = (weights * (x - mean.unsqueeze(1)).square()).sum(dim=1)
        std = torch.sqrt(variance.clamp(min=STD_FLOOR**2))
        return torch.cat([mean, std], dim=1)


class EmbeddingHead(nn.Module):
    """Attentive statistical pooling, then two FC layers: frames [B, T, D] -> embedding [B, E]."""

    def __init__(self, dim: int, attention_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.pooling = AttentiveStatsPooling(dim, attention_dim)
        self.fc1 = nn.Linear(2 * dim, hidden_dim)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, frames: Tensor) -> Tensor:
        x = torch.relu(self.norm(self.fc1(self.pooling(frames))))
        return self.fc2(x)


def _cosines(embeddings: Tensor, centres: Tensor) -> Tensor:
    return F.normalize(embeddings.float(), dim=1) @ F.normalize(centres.float(), dim=1).T


class ArcFace(nn.Module):
    """Additive angular margin: the target logit is s * cos(theta + m), the others s * cos(theta).

    Past theta = pi - m the margin would wrap around and reward a wrong angle, so there the
    target logit falls back to s * (cos(theta) - m sin(m)), which keeps decreasing.
    """

    def __init__(self, embed_dim: int, classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    @property
    def classes(self) -> int:
        return self.weight.shape[0]

    def logits(self, embeddings: Tensor) -> Tensor:
        """Margin-free scaled cosines, for predictions."""
        return self.scale * _cosines(embeddings, self.weight)

    def forward(self, embeddings: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy with the margin applied to each clip's target class."""
        cos = _cosines(embeddings, self.weight).clamp(-1.0, 1.0)
        target_cos = cos.gather(1, targets[:, None])
        sin = torch.sqrt((1.0 - target_cos * target_cos).clamp(min=0.0))
        with_margin = target_cos * math.cos(self.margin) - sin * math.sin(self.margin)
        fallback = target_cos - self.margin * math.sin(self.margin)
        target_logit = torch.where(
            target_cos > math.cos(math.pi - self.margin), with_margin, fallback
        )
        logits = cos.scatter(1, targets[:, None], target_logit)
        return F.cross_entropy(self.scale * logits, targets)


class SubClusterAdaCos(nn.Module):
    """Several centres per class and an adaptive scale (sub-cluster AdaCos).

    A class's probability is the sum over its centres, so one condition may occupy several
    regions of the sphere. The scale follows the batch: s = log(B_avg) / cos(min(pi/4, θ_med)),
    with B_avg the mean summed non-target exp-logits and θ_med the median target angle.
    """

    def __init__(self, embed_dim: int, classes: int, subclusters: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes * subclusters, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.subclusters = subclusters
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) * math.log(max(classes - 1, 2))))

    @property
    def classes(self) -> int:
        return self.weight.shape[0] // self.subclusters

    def _class_logits(self, cos: Tensor) -> Tensor:
        # The scale is a constant of this forward pass: it adapts in place after each batch,
        # which must not touch a graph that still holds it (mixup calls the loss twice).
        scale = float(self.scale)
        per_centre = (scale * cos).view(cos.shape[0], self.classes, self.subclusters)
        return torch.logsumexp(per_centre, dim=2)

    def logits(self, embeddings: Tensor) -> Tensor:
        return self._class_logits(_cosines(embeddings, self.weight))

    def forward(self, embeddings: Tensor, targets: Tensor) -> Tensor:
        cos = _cosines(embeddings, self.weight).clamp(-1.0, 1.0)
        if self.training:
            self._update_scale(cos.detach(), targets)
        return F.cross_entropy(self._class_logits(cos), targets)

    @torch.no_grad()
    def _update_scale(self, cos: Tensor, targets: Tensor) -> None:
        centre_class = torch.arange(cos.shape[1], device=cos.device) // self.subclusters
        is_target = centre_class[None, :] == targets[:, None]
        others = torch.where(is_target, torch.zeros_like(cos), torch.exp(self.scale * cos))
        b_avg = others.sum(dim=1).mean()
        target_cos = torch.where(is_target, cos, torch.full_like(cos, -1.0)).max(dim=1).values
        theta_med = torch.acos(target_cos).median()
        new_scale = torch.log(b_avg.clamp(min=1e-6)) / torch.cos(
            torch.clamp(theta_med, max=math.pi / 4)
        )
        if torch.isfinite(new_scale) and new_scale > 0:
            self.scale.copy_(new_scale)


def build_margin_loss(
    kind: str, embed_dim: int, classes: int, scale: float, margin: float, subclusters: int
) -> ArcFace | SubClusterAdaCos:
    """The loss a recipe's head section names."""
    if kind == "arcface":
        return ArcFace(embed_dim, classes, scale, margin)
    if kind == "subcluster-adacos":
        return SubClusterAdaCos(embed_dim, classes, subclusters)
    raise ValueError(f"unknown margin loss {kind!r}; use 'arcface' or 'subcluster-adacos'")
