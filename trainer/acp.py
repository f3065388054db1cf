"""Adaptive Combination Perturbation (ACP): ensemble weights for per-model anomaly scores.

Each model's score is first standardised with the statistics of its own bank's leave-one-out
scores (edge_monitor.core.detector.ScoreNorm.from_loo), exactly as the daemon does, so the fusion
needs no test labels at run time. The fused score is the weighted sum. ACP searches the
weights: starting from uniform (then from random points, the restarts), it adds Gaussian
perturbations whose scale decays, projects back onto the simplex (non-negative, sum 1) and
keeps a candidate whenever the validation figure (DCASE hmean) does not get worse.

Validation is honest: weights are chosen on k-1 folds of the test clips (stratified by
section, domain and label) and applied to the held-out fold; the figure reported is the hmean
of those out-of-fold fused scores. Uniform weights and each single model are reported beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.metrics import overall_metrics, section_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labelled:
    """Test clips every model scored: labels, domains and the section each belongs to."""

    is_anomaly: np.ndarray  # (N,) bool
    domains: np.ndarray  # (N,) str
    sections: np.ndarray  # (N,) str, e.g. "ToyCar/00"

    def subset(self, rows: np.ndarray) -> Labelled:
        return Labelled(self.is_anomaly[rows], self.domains[rows], self.sections[rows])

    def hmean(self, scores: np.ndarray) -> float:
        """DCASE overall hmean of `scores` (one per clip); 0 when undefined or not finite."""
        if not np.all(np.isfinite(scores)):
            return 0.0
        per_section = []
        for section in np.unique(self.sections):
            keep = self.sections == section
            per_section.append(
                section_metrics(scores[keep], self.is_anomaly[keep], self.domains[keep])
            )
        value = overall_metrics(per_section).hmean
        return float(value) if np.isfinite(value) else 0.0


@dataclass(frozen=True)
class AcpSettings:
    restarts: int = 4
    iterations: int = 150
    initial_scale: float = 0.3
    decay: float = 0.97
    seed: int = 0


def project_to_simplex(weights: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one; anything degenerate becomes uniform."""
    w = np.where(np.isfinite(weights), weights, 0.0)
    w = np.clip(w, 0.0, None)
    total = w.sum()
    if not np.isfinite(total) or total <= 1e-12:
        return np.full(len(w), 1.0 / len(w))
    return w / total


def acp_search(
    scores: np.ndarray, objective: Callable[[np.ndarray], float], settings: AcpSettings
) -> tuple[np.ndarray, float]:
    """Weights (M,) on the simplex maximising objective(weights @ scores), and that value."""
    models = scores.shape[0]
    rng = np.random.default_rng(settings.seed)
    uniform = np.full(models, 1.0 / models)
    best_w, best_v = uniform, objective(uniform @ scores)
    if models == 1:
        return best_w, best_v
    for restart in range(settings.restarts):
        w = uniform if restart == 0 else project_to_simplex(rng.dirichlet(np.ones(models)))
        v = objective(w @ scores)
        scale = settings.initial_scale
        for _ in range(settings.iterations):
            candidate = project_to_simplex(w + rng.normal(0.0, scale, models))
            value = objective(candidate @ scores)
            if value >= v:
                w, v = candidate, value
            scale *= settings.decay
        if v > best_v:
            best_w, best_v = w, v
    return project_to_simplex(best_w), best_v


def stratified_folds(labelled: Labelled, folds: int, seed: int) -> np.ndarray:
    """Fold index of each clip; every fold gets its share of each section/domain/label."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labelled.is_anomaly), np.int64)
    strata = {}
    for i, key in enumerate(
        zip(labelled.sections, labelled.domains, labelled.is_anomaly, strict=True)
    ):
        strata.setdefault(key, []).append(i)
    offset = 0
    for rows in strata.values():
        rows = rng.permutation(rows)
        fold[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)
    return fold


@dataclass(frozen=True)
class AcpReport:
    names: list[str]
    weights: np.ndarray  # chosen on all clips: what a bundle ships
    fold_weights: list[np.ndarray]
    acp_hmean_validated: float  # out-of-fold: weights never saw the clips they score
    acp_hmean_in_sample: float  # optimistic: chosen and reported on the same clips
    uniform_hmean: float
    single_hmean: dict[str, float]

    def table(self) -> str:
        rows = [(name, f"{value:.4f}") for name, value in self.single_hmean.items()]
        rows += [
            ("uniform ensemble", f"{self.uniform_hmean:.4f}"),
            ("ACP ensemble (k-fold validated)", f"{self.acp_hmean_validated:.4f}"),
            ("ACP ensemble (in-sample, optimistic)", f"{self.acp_hmean_in_sample:.4f}"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'model':<{width}}  hmean", *[f"{a:<{width}}  {b}" for a, b in rows]]
        weights = ", ".join(f"{n}={w:.3f}" for n, w in zip(self.names, self.weights, strict=True))
        return "\n".join([*lines, f"ACP weights: {weights}"])


def run_acp(
    names: Sequence[str],
    scores: np.ndarray,
    labelled: Labelled,
    folds: int = 5,
    settings: AcpSettings | None = None,
) -> AcpReport:
    """Search weights on standardised (M, N) scores; validate them by k-fold over clips."""
    settings = settings or AcpSettings()
    if scores.shape != (len(names), len(labelled.is_anomaly)):
        raise ValueError(f"scores {scores.shape} do not match {len(names)} models x clips")
    if folds < 2:
        raise ValueError(f"folds = {folds}: honest validation needs at least 2")
    fold = stratified_folds(labelled, folds, settings.seed)
    out_of_fold = np.empty(scores.shape[1])
    fold_weights = []
    for f in range(folds):
        train_rows, held_rows = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        w, value = acp_search(
            scores[:, train_rows], labelled.subset(train_rows).hmean, settings
        )
        out_of_fold[held_rows] = w @ scores[:, held_rows]
        fold_weights.append(w)
        log.info("fold %d: weights %s, train hmean %.4f", f, np.round(w, 3), value)
    weights, in_sample = acp_search(scores, labelled.hmean, settings)
    uniform = np.full(len(names), 1.0 / len(names))
    return AcpReport(
        names=list(names),
        weights=weights,
        fold_weights=fold_weights,
        acp_hmean_validated=labelled.hmean(out_of_fold),
        acp_hmean_in_sample=in_sample,
        uniform_hmean=labelled.hmean(uniform @ scores),
        single_hmean={n: labelled.hmean(scores[i]) for i, n in enumerate(names)},
    )

