"""Pretrained audio backbones with strict loaders for their official checkpoint formats."""

from trainer.backbones.base import Backbone
from trainer.backbones.registry import build_backbone

__all__ = ["Backbone", "build_backbone"]
