"""LoRA: low-rank adapters on a backbone's attention projections, the base weights frozen.

A small module of our own rather than peft's injection: it keeps parameter names predictable
(`<layer>.base.weight`, `<layer>.lora_a`, `<layer>.lora_b`), and `merge_lora` folds the adapters
back into plain Linear layers so the saved model is an ordinary backbone for embedding/export.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edge_monitor.core.errors import ConfigError


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * B(A(dropout(x))); B starts at zero: y = base(x) at first."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        update = self.dropout(x) @ self.lora_a.T @ self.lora_b.T
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function (base weight + scaled B @ A)."""
        linear = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None
        )
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.scaling * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear.to(self.base.weight.device)


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_lora(
    model: nn.Module, target_names: list[str], rank: int, alpha: float, dropout: float
) -> list[str]:
    """Freeze every parameter of `model`, then wrap each named Linear in a LoRALinear.

    Returns the wrapped names. An empty list of targets (a backbone without attention, such
    as the ResNet) is a configuration error: LoRA would train nothing.
    """
    if not target_names:
        raise ConfigError(
            f"{type(model).__name__} has no attention projections for LoRA; use the 'full' "
            "strategy for this backbone or pick a transformer backbone"
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in target_names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"LoRA target {name!r} is a {type(layer).__name__}, not a Linear")
        _set_child(model, name, LoRALinear(layer, rank, alpha, dropout))
    return list(target_names)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear in `model` by its merged Linear, in place; returns `model`."""
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in names:
        _set_child(model, name, model.get_submodule(name).merged())
    return model
