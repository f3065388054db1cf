"""DCASE metrics agree with sklearn (the official evaluator's library) and with hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from edge_monitor.core.metrics import (
    SectionMetrics,
    auc,
    harmonic_mean,
    overall_metrics,
    partial_auc,
    roc_curve,
    section_metrics,
)


def _random_case(seed: int, n: int, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    s = rng.normal(size=n) + 0.8 * y
    if tied:
        s = np.round(s * 2) / 2  # few distinct values: many ties across classes
    return y, s


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_sklearn(seed: int, tied: bool) -> None:
    y, s = _random_case(seed, 37 + 20 * seed, tied)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.1, 0.05, 0.3, 0.5])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_partial_auc_matches_sklearn(seed: int, tied: bool, max_fpr: float) -> None:
    y, s = _random_case(seed, 50 + 30 * seed, tied)
    expected = roc_auc_score(y, s, max_fpr=max_fpr)
    assert partial_auc(y, s, max_fpr) == pytest.approx(expected, abs=1e-12)


def test_hand_computed_auc() -> None:
    # Normals 0.1, 0.4; anomalies 0.35, 0.8: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie between an anomaly and a normal counts one half: (1 + 0.5) / 2.
    assert auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert auc([0, 1], [0.0, 1.0]) == 1.0
    assert auc([0, 1], [1.0, 0.0]) == 0.0
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_hand_computed_partial_auc() -> None:
    # Perfect separation: standardised pAUC 1; perfectly wrong: the minimum 0.5 * (1 - ...).
    y = np.array([0] * 10 + [1] * 10)
    s = np.arange(20, dtype=float)
    assert partial_auc(y, s) == pytest.approx(1.0)
    # Every score equal: the ROC is the diagonal, standardised to exactly 0.5.
    assert partial_auc(y, np.zeros(20)) == pytest.approx(0.5)
    # Reversed order: raw area 0 -> 0.5 * (1 + (0 - 0.005) / (0.1 - 0.005)).
    assert partial_auc(y, -s) == pytest.approx(0.5 * (1 - 0.005 / 0.095))


def test_roc_curve_has_one_step_per_distinct_score() -> None:
    fpr, tpr = roc_curve([0, 1, 0, 1], [0.3, 0.3, 0.1, 0.9])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


def test_harmonic_mean_of_known_numbers() -> None:
    assert harmonic_mean([1.0, 4.0, 4.0]) == pytest.approx(2.0)
    assert harmonic_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert harmonic_mean([0.9, 0.0]) == 0.0
    assert harmonic_mean([0.6, float("nan")]) == pytest.approx(0.6)
    assert np.isnan(harmonic_mean([]))


def test_section_metrics_use_all_anomalies_for_each_domain() -> None:
    # Source normals low, target normals high; anomalies in between (from both domains).
    scores = [0.1, 0.2, 0.9, 0.8, 0.5, 0.6]
    anomaly = [0, 0, 0, 0, 1, 1]
    domains = ["source", "source", "target", "target", "source", "target"]
    m = section_metrics(scores, anomaly, domains)
    assert m.auc_source == 1.0  # both anomalies above both source normals
    assert m.auc_target == 0.0  # both anomalies below both target normals
    y, s = np.array(anomaly, bool), np.array(scores)
    assert m.pauc == pytest.approx(roc_auc_score(y, s, max_fpr=0.1))
    assert m.hmean == 0.0


def test_overall_is_hmean_of_all_section_numbers() -> None:
    a = SectionMetrics(0.8, 0.6, 0.5)
    b = SectionMetrics(0.9, 0.7, 0.55)
    every = [*a.values(), *b.values()]
    assert overall_metrics([a, b]).hmean == pytest.approx(harmonic_mean(every))
    assert a.hmean == pytest.approx(3 / (1 / 0.8 + 1 / 0.6 + 1 / 0.5))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="pair up"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="domains"):
        section_metrics([0.1, 0.2], [0, 1], ["source", "elsewhere"])
