"""The live feed: what the processing loop hands the web view, kept in memory and bounded.

The processing thread appends (a window's score, an alarm message, an inference time) under
a short lock and returns; it never waits for a reader and never does a reader's work. The
web server's thread reads by sequence number (`scores_since`), so a browser that connects
late gets the recent timeline and one that keeps up gets only what is new. With the web view
off the daemon has no feed and the loop does none of this.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (seconds) of the inference-time histogram buckets; +Inf is implied.
INFERENCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ScorePoint:
    """One scored window: its sequence number, end time (epoch seconds), score, threshold."""

    seq: int
    at: float
    score: float
    threshold: float


@dataclass
class Histogram:
    """Cumulative-free bucket counts of one machine's inference times."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(INFERENCE_BUCKETS_S) + 1))
    total_s: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(INFERENCE_BUCKETS_S, seconds)] += 1
        self.total_s += seconds
        self.n += 1


class LiveFeed:
    """Recent scores and alarms per machine for the web view; see the module docstring."""

    def __init__(self, timeline_points: int = 3600, alarms_kept: int = 200) -> None:
        self.timeline_points = timeline_points
        self.alarms_kept = alarms_kept
        self._lock = threading.Lock()
        self._seq = 0
        self._scores: dict[str, deque[ScorePoint]] = {}
        self._alarms: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._alarm_version = 0
        self._alarm_totals: dict[str, int] = {}
        self._inference: dict[str, Histogram] = {}

    # Writers (the processing thread) ----------------------------------------------------

    def add_score(self, machine: str, at: float, score: float, threshold: float) -> None:
        with self._lock:
            self._seq += 1
            points = self._scores.get(machine)
            if points is None:
                points = self._scores[machine] = deque(maxlen=self.timeline_points)
            points.append(ScorePoint(self._seq, at, score, threshold))

    def add_alarm(self, message: Mapping[str, Any]) -> None:
        """One alarm message (new, update or end, as published): the alarm's latest fields
        are kept, with `started`/`ended` flags the list shows."""
        event_id = str(message["event_id"])
        with self._lock:
            alarm = self._alarms.pop(event_id, None) or {}
            if message.get("type") == "new":
                machine = str(message["machine"])
                self._alarm_totals[machine] = self._alarm_totals.get(machine, 0) + 1
            kept = {k: v for k, v in message.items() if v is not None or k not in alarm}
            self._alarms[event_id] = {**alarm, **kept}
            while len(self._alarms) > self.alarms_kept:
                self._alarms.popitem(last=False)
            self._alarm_version += 1

    def observe_inference(self, machine: str, seconds: float) -> None:
        with self._lock:
            histogram = self._inference.get(machine)
            if histogram is None:
                histogram = self._inference[machine] = Histogram()
            histogram.observe(seconds)

    # Readers (the web server) -----------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def alarm_version(self) -> int:
        return self._alarm_version

    def scores_since(self, seq: int) -> tuple[int, dict[str, list[ScorePoint]]]:
        """(latest sequence number, per machine the points after `seq`, oldest first)."""
        with self._lock:
            out = {}
            for machine, points in self._scores.items():
                if points and points[-1].seq > seq:
                    out[machine] = [p for p in points if p.seq > seq]
            return self._seq, out

    def alarms(self) -> list[dict[str, Any]]:
        """Alarms seen since the daemon started, newest first."""
        with self._lock:
            return [dict(a) for a in reversed(self._alarms.values())]

    def alarm(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._alarms.get(event_id)
            return dict(found) if found is not None else None

    def alarm_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._alarm_totals)

    def inference(self) -> dict[str, Histogram]:
        with self._lock:
            return {m: Histogram(list(h.counts), h.total_s, h.n)
                    for m, h in self._inference.items()}
