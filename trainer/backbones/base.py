"""The one interface every backbone offers, and strict typed configs for building them.

Heads and fine-tuning strategies only rely on `forward(wave [B, T] at 16 kHz) -> [B, frames, dim]`,
`dim`, `sample_rate_hz` and `attention_module_names()` (the Linear layers LoRA adapts).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from edge_monitor.core.errors import BadInputError, ConfigError

SAMPLE_RATE_HZ = 16000


class BackboneConfig(BaseModel):
    """Base of every backbone config: typed fields with defaults; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BackboneConfig)


def parse_config(
    cls: type[ConfigT], values: Mapping[str, Any], source: str, error: type[BadInputError]
) -> ConfigT:
    """Validate `values` as `cls`, raising `error` that names the source, the keys and the fix."""
    if not isinstance(values, Mapping):
        raise error(f"{source}: the config must be a mapping, got {type(values).__name__}")
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '<root>'}: {item['msg']}"
            for item in exc.errors()
        )
        known = ", ".join(sorted(cls.model_fields))
        raise error(
            f"{source}: invalid {cls.__name__}: {problems}. Known keys: {known}. "
            "Fix: remove unknown keys and correct the values."
        ) from exc


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """An audio encoder turning a 16 kHz waveform into frame-level features."""

    dim: int
    sample_rate_hz: int = SAMPLE_RATE_HZ
    attention_suffixes: tuple[str, ...] = ()
    """Name endings of the attention projections (q/k/v/out) that LoRA adapts."""

    @abc.abstractmethod
    def forward(self, wave: Tensor) -> Tensor:
        """Map wave [B, T] to features [B, frames, dim]."""

    def config_values(self) -> dict[str, Any] | None:
        """The full config as plain values, so a run directory rebuilds the backbone without
        the original pretrained file (None for a backbone without a typed config)."""
        dump = getattr(getattr(self, "config", None), "model_dump", None)
        return dump(mode="json") if callable(dump) else None

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters that start from a checkpoint and train at `optim.backbone_lr`."""
        return list(self.parameters())

    def attention_module_names(self) -> list[str]:
        """Full names of the Linear layers in attention blocks, for peft's target_modules."""
        return [
            name
            for name, module in self.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(self.attention_suffixes)
        ]


def config_for_size(
    cls: type[ConfigT], presets: Mapping[str, Mapping[str, Any]], size: str | Mapping[str, Any]
) -> ConfigT:
    """A config from a preset name ("tiny", "base", ...) or from values over the "base" preset."""
    if isinstance(size, str):
        if size not in presets:
            raise ConfigError(
                f"size {size!r} is not a {cls.__name__} preset; use one of {sorted(presets)} "
                "or a mapping of config values"
            )
        return parse_config(cls, presets[size], f"preset {size!r}", ConfigError)
    if not isinstance(size, Mapping):
        raise ConfigError(f"size must be a preset name or a mapping, got {type(size).__name__}")
    return parse_config(cls, {**presets["base"], **size}, "size mapping", ConfigError)
