"""Bootstrap intervals, split-half validated choices, and quiet-end trimming."""

from __future__ import annotations

import numpy as np

from edge_monitor.core.preprocess import trim_quiet_ends
from trainer.bootstrap import bootstrap_figures, split_halves, validated_choice

RATE = 16000


def _labels() -> tuple[np.ndarray, np.ndarray]:
    anomaly = np.array([False] * 20 + [True] * 20)
    domains = np.array((["source"] * 10 + ["target"] * 10) * 2)
    return anomaly, domains


def test_interval_holds_the_point_and_shrinks_for_a_clean_separation() -> None:
    anomaly, domains = _labels()
    rng = np.random.default_rng(0)
    noisy = rng.standard_normal(40) + anomaly * 0.5
    clean = rng.standard_normal(40) + anomaly * 10.0
    wide = bootstrap_figures(noisy, anomaly, domains)
    narrow = bootstrap_figures(clean, anomaly, domains)
    for figures in (wide, narrow):
        for interval in figures.values():
            assert interval.low <= interval.value <= interval.high
    assert narrow["hmean"].value == 100.0 and narrow["hmean"].low == 100.0
    assert wide["hmean"].high - wide["hmean"].low > 5.0


def test_halves_keep_every_group_split() -> None:
    anomaly, domains = _labels()
    for first, second in split_halves(anomaly, domains, 5):
        assert sorted(np.concatenate([first, second])) == list(range(40))
        assert {(domains[i], anomaly[i]) for i in first} == {(d, a) for d in ("source", "target")
                                                             for a in (False, True)}


def test_validated_choice_prefers_the_informative_candidate_and_stays_honest() -> None:
    anomaly, domains = _labels()
    rng = np.random.default_rng(1)
    good = rng.standard_normal(40) + anomaly * 3.0
    noise = {f"noise{i}": rng.standard_normal(40) for i in range(5)}
    value, picks = validated_choice({"good": good, **noise}, anomaly, domains, splits=5)
    assert picks["good"] == 10 and value > 80.0
    chance, _ = validated_choice(noise, anomaly, domains, splits=5)
    assert chance < 75.0  # picking the luckiest of five noise scores does not carry over


def _clip(lead_s: float, tail_s: float) -> np.ndarray:
    rng = np.random.default_rng(2)
    body = 0.1 * rng.standard_normal(int(4 * RATE))
    return np.concatenate([1e-5 * rng.standard_normal(int(lead_s * RATE)), body,
                           1e-5 * rng.standard_normal(int(tail_s * RATE))]).astype(np.float32)


def test_quiet_lead_in_and_tail_are_trimmed() -> None:
    trimmed = trim_quiet_ends(_clip(1.0, 0.5), RATE, 20.0)
    assert abs(trimmed.shape[0] - 4 * RATE) <= RATE // 10
    assert np.sqrt(np.mean(trimmed[: RATE // 10] ** 2)) > 0.05


def test_a_clip_without_quiet_ends_or_mostly_quiet_is_kept_whole() -> None:
    steady = _clip(0.0, 0.0)
    assert trim_quiet_ends(steady, RATE, 20.0).shape == steady.shape
    mostly_quiet = _clip(6.0, 4.0)
    assert trim_quiet_ends(mostly_quiet, RATE, 20.0).shape == mostly_quiet.shape
