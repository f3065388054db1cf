"""The alarm state machine of one machine, configured once and fed one window at a time.

Its settings are the config's `decision:` section as loaded (DecisionSection).

A window's score is compared with the detector's threshold after optional median smoothing.
An alarm starts when k of the last n windows are above the threshold (debouncing) and no
cooldown is running; it ends when fewer than k of the last n windows stay above
threshold * hysteresis_ratio, so a score hovering at the threshold does not flap. Each alarm
has an event id shared by its `new`, `update` (peak rose) and `end` transitions.

Besides `normal` and `anomaly`, a machine can be in `learning` (the built-in model is still
collecting its bank), `enrolling` (a technician is recording a new normal) or `fault` (the
input cannot be trusted: silence, clipping, device lost, disk error). Those states suspend
judgement: an open alarm is ended and the window history is forgotten, so a decision after
them is made on fresh audio only.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from edge_monitor.config.sections import DecisionSection

NORMAL, ANOMALY, FAULT, LEARNING, ENROLLING = "normal", "anomaly", "fault", "learning", "enrolling"
SUSPENDED = (FAULT, LEARNING, ENROLLING)


@dataclass(frozen=True)
class Transition:
    """A change of an alarm: `new`, `update` (the peak rose) or `end`."""

    kind: str
    event_id: str
    started_at: datetime
    at: datetime
    peak_score: float
    threshold: float
    ended_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What one window changed: the status after it, whether it changed, any transitions."""

    status: str
    status_changed: bool
    smoothed_score: float | None
    transitions: tuple[Transition, ...] = ()
    reason: str | None = None


@dataclass
class _Alarm:
    event_id: str
    started_at: datetime
    peak_score: float
    last_update: datetime
    peak_unsent: bool = False


class DecisionMachine:
    """One machine's decision state; not thread-safe (the processing thread owns it)."""

    def __init__(self, config: DecisionSection, status: str = NORMAL) -> None:
        self.config = config
        self.status = status
        self.reason: str | None = None
        self.since: datetime | None = None
        self._raw: deque[float] = deque(maxlen=config.smoothing)
        self._smoothed: deque[float] = deque(maxlen=config.n)
        self._alarm: _Alarm | None = None
        self._cooldown_until: datetime | None = None
        self._threshold = float("nan")

    @property
    def alarm_event_id(self) -> str | None:
        return self._alarm.event_id if self._alarm else None

    def observe(self, score: float, threshold: float, at: datetime) -> Outcome:
        """Feed one scored window ending at `at`; only valid outside the suspended states."""
        if self.status in SUSPENDED:
            raise RuntimeError(f"observe() called in state {self.status}; resume() first")
        cfg = self.config
        self._threshold = threshold
        self._raw.append(float(score) if np.isfinite(score) else float("inf"))
        smoothed = float(np.median(self._raw))
        self._smoothed.append(smoothed)
        history = np.asarray(self._smoothed)
        transitions: list[Transition] = []
        before = self.status
        if self._alarm is None:
            hot = int(np.count_nonzero(history > threshold))
            cooling = self._cooldown_until is not None and at < self._cooldown_until
            if hot >= cfg.k and not cooling:
                self._alarm = _Alarm(str(uuid.uuid4()), at, float(history.max()), at)
                transitions.append(self._transition("new", at))
                self._set(ANOMALY, at)
        else:
            alarm = self._alarm
            warm = int(np.count_nonzero(history > threshold * cfg.hysteresis_ratio))
            if warm < cfg.k:
                transitions.append(self._end(at))
            else:
                if smoothed > alarm.peak_score:
                    alarm.peak_score = smoothed
                    alarm.peak_unsent = True
                due = at - alarm.last_update >= timedelta(seconds=cfg.update_interval_s)
                if alarm.peak_unsent and due:
                    alarm.last_update = at
                    alarm.peak_unsent = False
                    transitions.append(self._transition("update", at))
        return Outcome(self.status, self.status != before, smoothed, tuple(transitions))

    def suspend(self, status: str, at: datetime, reason: str | None = None) -> Outcome:
        """Enter fault, learning or enrolling: end any open alarm and forget the history."""
        if status not in SUSPENDED:
            raise ValueError(f"suspend() takes one of {SUSPENDED}, got {status!r}")
        if status == FAULT and not reason:
            raise ValueError("a fault needs a reason")
        transitions = (self._end(at),) if self._alarm is not None else ()
        changed = status != self.status or reason != self.reason
        self._forget()
        self._set(status, at, reason)
        return Outcome(self.status, changed, None, transitions, reason)

    def resume(self, at: datetime) -> Outcome:
        """Leave a suspended state: back to normal, judged on fresh windows only."""
        if self.status not in SUSPENDED:
            return Outcome(self.status, False, None)
        self._forget()
        self._set(NORMAL, at)
        return Outcome(self.status, True, None)

    def close(self, at: datetime) -> tuple[Transition, ...]:
        """End an open alarm (shutdown, detector swapped); the status becomes normal."""
        if self._alarm is None:
            return ()
        transition = self._end(at)
        self._forget()
        return (transition,)

    # Internals ------------------------------------------------------------------------

    def _transition(self, kind: str, at: datetime) -> Transition:
        alarm = self._alarm
        assert alarm is not None
        return Transition(
            kind, alarm.event_id, alarm.started_at, at, alarm.peak_score, self._threshold,
            ended_at=at if kind == "end" else None,
        )

    def _end(self, at: datetime) -> Transition:
        transition = self._transition("end", at)
        self._alarm = None
        self._cooldown_until = at + timedelta(seconds=self.config.cooldown_s)
        self._set(NORMAL, at)
        return transition

    def _forget(self) -> None:
        self._raw.clear()
        self._smoothed.clear()

    def _set(self, status: str, at: datetime, reason: str | None = None) -> None:
        if status != self.status or reason != self.reason or self.since is None:
            self.since = at
        self.status = status
        self.reason = reason
