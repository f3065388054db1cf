"""(c) LoRA: the pretrained backbone stays frozen; low-rank adapters on its attention
projections and the head train. Few trainable weights suit few normal clips."""

from __future__ import annotations

import copy

from trainer.lora import apply_lora, merge_lora
from trainer.strategies.base import EmbeddingModel, Strategy, StrategyContext


class LoraFineTuning(Strategy):
    """Adapters on `backbone.attention_module_names()`; every base weight frozen."""

    def __init__(self, context: StrategyContext) -> None:
        super().__init__(context)
        section = self.recipe.lora
        assert section is not None  # the recipe validator guarantees it
        self.adapted = apply_lora(
            self.backbone,
            self.backbone.attention_module_names(),
            section.rank,
            section.alpha,
            section.dropout,
        )

    def embedding_model(self) -> EmbeddingModel:
        """A copy of the backbone with the adapters merged: a plain backbone for embedding."""
        merged = merge_lora(copy.deepcopy(self.backbone))
        model = super().embedding_model()
        return EmbeddingModel(merged, model.heads, model.classes)
