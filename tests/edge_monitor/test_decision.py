"""The alarm state machine: debouncing, hysteresis, cooldown, smoothing, suspended states."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from edge_monitor.config.sections import DecisionSection
from edge_monitor.pipeline.decision import (
    ANOMALY,
    FAULT,
    LEARNING,
    NORMAL,
    DecisionMachine,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
THRESHOLD = 1.0


def feed(machine: DecisionMachine, scores: list[float], start_s: float = 0.0, hop_s: float = 1.0):
    """Feed scores one per hop; return (status after each window, all transitions)."""
    statuses, transitions = [], []
    for i, score in enumerate(scores):
        outcome = machine.observe(score, THRESHOLD, T0 + timedelta(seconds=start_s + i * hop_s))
        statuses.append(outcome.status)
        transitions.extend(outcome.transitions)
    return statuses, transitions


def test_k_of_n_starts_an_alarm_only_after_k_hot_windows():
    machine = DecisionMachine(DecisionSection(k=3, n=5, cooldown_s=0))
    statuses, transitions = feed(machine, [0.5, 2.0, 0.5, 2.0, 0.5, 2.0, 2.0])
    assert statuses == [NORMAL] * 5 + [ANOMALY, ANOMALY]
    assert [t.kind for t in transitions] == ["new"]
    assert transitions[0].started_at == T0 + timedelta(seconds=5)
    assert transitions[0].peak_score == 2.0


def test_isolated_spikes_never_alarm():
    machine = DecisionMachine(DecisionSection(k=2, n=3))
    statuses, transitions = feed(machine, [5.0, 0.1, 0.1, 5.0, 0.1, 0.1, 5.0])
    assert set(statuses) == {NORMAL}
    assert transitions == []


def test_hysteresis_keeps_the_alarm_while_scores_stay_above_the_clear_level():
    machine = DecisionMachine(DecisionSection(k=2, n=3, hysteresis_ratio=0.8, cooldown_s=0))
    # 0.9 is below the threshold but above 0.8 * threshold: the alarm stays on.
    statuses, transitions = feed(machine, [2.0, 2.0, 0.9, 0.9, 0.9, 0.5, 0.5])
    assert statuses == [NORMAL, ANOMALY, ANOMALY, ANOMALY, ANOMALY, ANOMALY, NORMAL]
    kinds = [t.kind for t in transitions]
    assert kinds == ["new", "end"]
    new, end = transitions
    assert new.event_id == end.event_id
    assert end.ended_at == T0 + timedelta(seconds=6)
    assert end.peak_score == 2.0


def test_cooldown_suppresses_a_new_alarm_until_it_expires():
    machine = DecisionMachine(DecisionSection(k=1, n=1, cooldown_s=10.0))
    scores = [2.0, 0.1] + [2.0] * 12
    statuses, transitions = feed(machine, scores)
    assert [t.kind for t in transitions] == ["new", "end", "new"]
    # The first alarm ended at t=1 s; the next may start at t=11 s, not before.
    assert transitions[2].started_at == T0 + timedelta(seconds=11)
    assert statuses[2:11] == [NORMAL] * 9
    assert transitions[0].event_id != transitions[2].event_id


def test_update_is_sent_when_the_peak_rises_at_most_once_per_interval():
    machine = DecisionMachine(DecisionSection(k=1, n=1, update_interval_s=5.0))
    scores = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 2.0, 9.0, 2.0, 2.0, 2.0, 2.0]
    _, transitions = feed(machine, scores)
    kinds = [(t.kind, t.peak_score, t.at) for t in transitions]
    # A rise inside the interval is held back and sent when the interval is over.
    assert kinds == [
        ("new", 2.0, T0),
        ("update", 7.0, T0 + timedelta(seconds=5)),
        ("update", 9.0, T0 + timedelta(seconds=10)),
    ]


def test_median_smoothing_ignores_single_window_outliers():
    machine = DecisionMachine(DecisionSection(smoothing=3, k=1, n=1))
    statuses, _ = feed(machine, [0.1, 0.1, 9.0, 0.1, 0.1])
    assert set(statuses) == {NORMAL}
    statuses, _ = feed(machine, [9.0, 9.0], start_s=5)
    assert statuses == [NORMAL, ANOMALY]


def test_fault_ends_an_open_alarm_and_forgets_history():
    machine = DecisionMachine(DecisionSection(k=2, n=3, cooldown_s=0))
    feed(machine, [2.0, 2.0])
    assert machine.status == ANOMALY
    outcome = machine.suspend(FAULT, T0 + timedelta(seconds=2), "silence for 30 s")
    assert outcome.status == FAULT and outcome.status_changed
    assert [t.kind for t in outcome.transitions] == ["end"]
    assert machine.reason == "silence for 30 s"
    with pytest.raises(RuntimeError):
        machine.observe(2.0, THRESHOLD, T0)
    assert machine.resume(T0 + timedelta(seconds=3)).status == NORMAL
    # One hot window after the fault is not enough: the two before it were forgotten.
    statuses, _ = feed(machine, [2.0], start_s=4)
    assert statuses == [NORMAL]


def test_learning_is_a_suspended_state_and_fault_needs_a_reason():
    machine = DecisionMachine(DecisionSection(), status=LEARNING)
    with pytest.raises(ValueError):
        machine.suspend(FAULT, T0)
    assert machine.resume(T0).status == NORMAL


def test_rejects_k_above_n():
    with pytest.raises(ValueError):
        DecisionSection(k=4, n=3)
