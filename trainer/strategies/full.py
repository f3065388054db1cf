"""(a) Full fine-tuning: every backbone and head weight trains on the auxiliary classes."""

from __future__ import annotations

from trainer.strategies.base import Strategy


class FullFineTuning(Strategy):
    """The shared supervised strategy, all parameters trainable (the base class as it is)."""
