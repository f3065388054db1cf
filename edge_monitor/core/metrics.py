"""DCASE Task 2 metrics: AUC, standardised partial AUC and their harmonic mean.

Computed exactly as the DCASE evaluator does (it calls sklearn), but in numpy/scipy so the
runtime needs no sklearn:

- AUC(source): source-domain normals against ALL anomalies (both domains);
- AUC(target): target-domain normals against ALL anomalies;
- pAUC: every clip, false-positive rate capped at 0.1, McClish-standardised
  (sklearn's ``roc_auc_score(y, s, max_fpr=0.1)``);
- the score of a machine section is the harmonic mean of those three numbers, and the
  overall score is the harmonic mean of all sections' numbers together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

DCASE_MAX_FPR = 0.1
SOURCE, TARGET = "source", "target"


def _check_binary(is_anomaly: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_anomaly, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores; they must pair up one to one")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or infinite values; every clip needs a finite score")
    return y, s


def auc(is_anomaly: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half).

    NaN when either class is empty: the area is undefined, not 0.5.
    """
    y, s = _check_binary(np.asarray(is_anomaly), np.asarray(scores))
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie between classes contributes 1/2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    is_anomaly: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, starting from (0, 0).

    Tied scores form one step (a diagonal segment), as in sklearn.
    """
    y, s = _check_binary(np.asarray(is_anomaly), np.asarray(scores))
    if y.all() or not y.any():
        raise ValueError("a ROC curve needs both normal and anomalous clips")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr


def partial_auc(
    is_anomaly: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    max_fpr: float = DCASE_MAX_FPR,
) -> float:
    """McClish-standardised partial AUC up to `max_fpr` (sklearn's ``max_fpr`` semantics).

    The raw area up to max_fpr is mapped so that chance gives 0.5 and a perfect detector 1.
    NaN when either class is empty.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr {max_fpr!r} must lie in (0, 1]")
    y = np.asarray(is_anomaly, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    if max_fpr == 1.0:
        return auc(is_anomaly, scores)
    fpr, tpr = roc_curve(is_anomaly, scores)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    # Close the curve at exactly max_fpr by linear interpolation on the crossing segment.
    tpr_at_max = float(np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1]))
    xs = np.r_[fpr[:stop], max_fpr]
    ys = np.r_[tpr[:stop], tpr_at_max]
    area = float(np.trapezoid(ys, xs))
    min_area = 0.5 * max_fpr**2  # the chance diagonal's area up to max_fpr
    max_area = max_fpr
    return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean of the finite values (NaN when none); any zero makes it zero."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan")
    if np.any(v < 0):
        raise ValueError(f"harmonic mean of negative values {v[v < 0].tolist()} is undefined")
    if np.any(v == 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


@dataclass(frozen=True)
class SectionMetrics:
    """DCASE figures of one machine section (NaN where a domain had no normal test clip)."""

    auc_source: float
    auc_target: float
    pauc: float

    @property
    def hmean(self) -> float:
        return harmonic_mean(self.values())

    def values(self) -> tuple[float, float, float]:
        return (self.auc_source, self.auc_target, self.pauc)


def section_metrics(
    scores: Sequence[float] | np.ndarray,
    is_anomaly: Sequence[bool] | np.ndarray,
    domains: Sequence[str] | np.ndarray,
    max_fpr: float = DCASE_MAX_FPR,
) -> SectionMetrics:
    """AUC(source), AUC(target) and pAUC of one machine section, as DCASE defines them.

    Each AUC pits one domain's normal clips against every anomalous clip, whatever its domain.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    d = np.asarray(domains, dtype=str)
    if not (s.shape == y.shape == d.shape):
        raise ValueError(f"scores {s.shape}, labels {y.shape}, domains {d.shape} must match")
    unknown = sorted(set(d.tolist()) - {SOURCE, TARGET})
    if unknown:
        raise ValueError(f"domains {unknown} are invalid; use {SOURCE!r} or {TARGET!r}")

    def domain_auc(domain: str) -> float:
        keep = y | (d == domain)
        return auc(y[keep], s[keep])

    return SectionMetrics(
        auc_source=domain_auc(SOURCE),
        auc_target=domain_auc(TARGET),
        pauc=partial_auc(y, s, max_fpr),
    )


def overall_metrics(sections: Iterable[SectionMetrics]) -> SectionMetrics:
    """Each column's harmonic mean over sections; their `hmean` equals DCASE's overall score.

    (The harmonic mean of the three column means equals the harmonic mean of all 3N numbers.)
    """
    rows = list(sections)
    return SectionMetrics(
        auc_source=harmonic_mean(r.auc_source for r in rows),
        auc_target=harmonic_mean(r.auc_target for r in rows),
        pauc=harmonic_mean(r.pauc for r in rows),
    )
