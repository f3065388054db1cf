"""Fine-tuning strategies, one module each, chosen by a recipe's `strategy` key."""

from __future__ import annotations

import importlib

from trainer.recipe import STRATEGY_CLASSES
from trainer.strategies.base import EmbeddingModel, Strategy, StrategyContext

REGISTRY = STRATEGY_CLASSES


def build_strategy(context: StrategyContext) -> Strategy:
    """The strategy the recipe names, built from the context (data read, model created)."""
    module_name, _, class_name = REGISTRY[context.recipe.strategy].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(context)


__all__ = ["REGISTRY", "EmbeddingModel", "Strategy", "StrategyContext", "build_strategy"]
