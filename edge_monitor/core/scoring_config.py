"""Scoring settings: every variant of the scoring contract is a value of this one type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edge_monitor.core.errors import ConfigError


@dataclass(frozen=True)
class ScoringConfig:
    """KNN / DADS-KNN / domain-wise min, as in DESIGN's scoring contract.

    alpha = 0 and n_syn = 0 give plain KNN.
    """

    k: int = 1  # neighbours averaged into the score
    alpha: float = 0.0  # density exponent: d / (rho + eps) ** alpha
    n_syn: int = 0  # synthetic entries drawn per target entry
    m: int = 5  # a target entry is interpolated towards one of its m nearest entries
    lambda_max: float = 0.5  # interpolation factor drawn from U(0, lambda_max)
    k_rho: int = 5  # neighbours over which the local density rho is averaged
    eps: float = 1e-6
    domain_wise_min: bool = False  # score source and target separately, take the min
    # each neighbour's distance divided by the leave-one-out median of its own domain, so a
    # clip near the few target entries is judged on the target's scale (no test label needed)
    domain_norm: bool = False
    loo_max: int = 5000  # leave-one-out scores on at most this many bank entries
    seed: int = 0

    def __post_init__(self) -> None:
        rules = {
            "k": self.k >= 1,
            "alpha": 0.0 <= self.alpha <= 4.0,
            "n_syn": self.n_syn >= 0,
            "m": self.m >= 1,
            "lambda_max": 0.0 < self.lambda_max <= 1.0,
            "k_rho": self.k_rho >= 1,
            "eps": self.eps > 0.0,
            "loo_max": self.loo_max >= 10,
        }
        hints = {
            "k": "an integer >= 1",
            "alpha": "a number in [0, 4]",
            "n_syn": "an integer >= 0",
            "m": "an integer >= 1",
            "lambda_max": "a number in (0, 1]",
            "k_rho": "an integer >= 1",
            "eps": "a small positive number",
            "loo_max": "an integer >= 10",
        }
        for key, ok in rules.items():
            if not ok:
                raise ConfigError(f"scoring.{key} = {getattr(self, key)!r}: must be {hints[key]}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "scoring") -> ScoringConfig:
        """Build from a mapping; unknown keys are errors, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}"
            )
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ScoringConfig:
        return dataclasses.replace(self, **changes)


DADS_DEFAULTS: dict[str, Any] = {"alpha": 1.0, "n_syn": 10, "m": 5, "lambda_max": 0.5, "k_rho": 5}

# The named variants the evaluation tools report side by side.
VARIANTS: dict[str, ScoringConfig] = {
    "knn": ScoringConfig(),
    "dads": ScoringConfig(**DADS_DEFAULTS),
    "knn-dwmin": ScoringConfig(domain_wise_min=True),
    "dads-dwmin": ScoringConfig(**DADS_DEFAULTS, domain_wise_min=True),
    "knn-dnorm": ScoringConfig(domain_norm=True),
    "dads-dnorm": ScoringConfig(**DADS_DEFAULTS, domain_norm=True),
}


def variant(name: str) -> ScoringConfig:
    """Look up a named variant with a clear error."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown scoring variant {name!r}; choose from {sorted(VARIANTS)}"
        ) from None
