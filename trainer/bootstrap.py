"""How sure a DCASE figure is: stratified bootstrap intervals and split-half validated choices.

With 100 test clips one AUC moves by several points when a handful of clips change, so every
figure is reported with a bootstrap interval (clips resampled within each domain x label
group, so every resample still has source and target normals and anomalies). Choosing a
setting by its test score overfits the same clips; `validated_choice` estimates what a
choice made that way is worth on clips it did not see: pick on one half, score on the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.metrics import section_metrics

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.90


@dataclass(frozen=True)
class Interval:
    """A figure and its bootstrap interval, in percent."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def _groups(is_anomaly: np.ndarray, domains: np.ndarray) -> list[np.ndarray]:
    keys = [f"{d}|{a}" for d, a in zip(domains, is_anomaly, strict=True)]
    return [np.flatnonzero(np.asarray(keys) == k) for k in sorted(set(keys))]


def _figures(scores: np.ndarray, is_anomaly: np.ndarray, domains: np.ndarray) -> np.ndarray:
    m = section_metrics(scores, is_anomaly, domains)
    return np.array([m.auc_source, m.auc_target, m.pauc, m.hmean]) * 100.0


def bootstrap_figures(
    scores: Sequence[float] | np.ndarray,
    is_anomaly: Sequence[bool] | np.ndarray,
    domains: Sequence[str] | np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, Interval]:
    """AUC(source), AUC(target), pAUC and hmean with percentile intervals at `level`."""
    s, a, d = np.asarray(scores, float), np.asarray(is_anomaly, bool), np.asarray(domains)
    point = _figures(s, a, d)
    groups = _groups(a, d)
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, 4))
    for i in range(resamples):
        rows = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        draws[i] = _figures(s[rows], a[rows], d[rows])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0)
    names = ("auc_source", "auc_target", "pauc", "hmean")
    return {n: Interval(point[i], low[i], high[i]) for i, n in enumerate(names)}


def split_halves(
    is_anomaly: np.ndarray, domains: np.ndarray, splits: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`splits` random halvings of the clips, each half holding half of every group."""
    rng = np.random.default_rng(seed)
    groups = _groups(np.asarray(is_anomaly, bool), np.asarray(domains))
    halves = []
    for _ in range(splits):
        first, second = [], []
        for g in groups:
            shuffled = rng.permutation(g)
            first.append(shuffled[: g.size // 2])
            second.append(shuffled[g.size // 2 :])
        halves.append((np.concatenate(first), np.concatenate(second)))
    return halves


def validated_choice(
    candidates: Mapping[str, np.ndarray],
    is_anomaly: Sequence[bool] | np.ndarray,
    domains: Sequence[str] | np.ndarray,
    splits: int = 20,
    seed: int = 0,
) -> tuple[float, dict[str, int]]:
    """Mean held-out hmean (percent) of picking the best candidate on one half of the clips,
    both ways round over `splits` halvings, and how often each candidate was picked."""
    a, d = np.asarray(is_anomaly, bool), np.asarray(domains)
    held_out = []
    picks = dict.fromkeys(candidates, 0)
    for first, second in split_halves(a, d, splits, seed):
        for pick_on, score_on in ((first, second), (second, first)):
            def hmean(name: str, rows: np.ndarray) -> float:
                return float(_figures(candidates[name][rows], a[rows], d[rows])[3])

            best = max(candidates, key=lambda n, rows=pick_on: hmean(n, rows))
            picks[best] += 1
            held_out.append(hmean(best, score_on))
    return float(np.mean(held_out)), picks
