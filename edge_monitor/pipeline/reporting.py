"""Where the processing loop's outcomes go: states, alarm events and scores to the publisher
(the MQTT client), alarm audio to the clip store, scores and alarms to the web view's live
feed (when the web view is on), the logs, and a snapshot for `status` and the web view.

Runs on the processing thread; only `snapshot()` is called from other threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.mqtt.journal import KIND_EVENT, KIND_STATE
from edge_monitor.mqtt.topics import (
    AlarmEvent,
    MachineState,
    Message,
    ScoreSample,
    TopicTree,
    ratio,
)
from edge_monitor.pipeline.decision import Outcome, Transition
from edge_monitor.pipeline.health import InputHealth
from edge_monitor.pipeline.live import LiveFeed
from edge_monitor.pipeline.settings import Counters

if TYPE_CHECKING:
    from edge_monitor.pipeline.machine import Machine

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where messages go (the MQTT client, the demo's local printer); must never block.

    The loop builds every message with the publisher's own topic tree, so a new topic is
    its builder in edge_monitor.mqtt.topics and its call here, nothing else.
    """

    topics: TopicTree

    def send(self, message: Message, kind: str | None, label: str) -> None:
        """`kind`: KIND_EVENT or KIND_STATE (durable), None (telemetry)."""


class ClipSaver(Protocol):
    """Saves the audio of an alarm and returns where (edge_monitor.pipeline.clip_store)."""

    def save(self, machine: str, audio: np.ndarray, sample_rate_hz: int, event_id: str,
             started_at: float) -> Path: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Reporter:
    """Publishes what changed, saves alarm clips and keeps the snapshot of every machine."""

    def __init__(self, publisher: Publisher | None, clips: ClipSaver | None,
                 health: InputHealth, counters: Counters) -> None:
        self.publisher = publisher
        self.clips = clips
        self.health = health
        self.counters = counters
        self.machines: Sequence[Machine] = ()
        self.score_telemetry = True
        self.score_interval_s = 0.0
        # Per machine: audio time of the last score sent; a machine absent is due at once.
        self._score_sent_at: dict[str, datetime] = {}
        self.threshold_scale = 1.0
        # The web view's feed and the base of clip URLs (None: the web view is off).
        self.live: LiveFeed | None = None
        self.clip_base_url: str | None = None
        # Clip (path, url) of each open alarm, so its update and end messages carry them too.
        self._alarm_clips: dict[str, tuple[str, str | None]] = {}
        # The systemd status line is sent once per loop turn, after every machine settled.
        self.status_changed = False
        self._snapshot: dict[str, Any] = {}
        self._snapshot_lock = threading.Lock()

    # Publishing -----------------------------------------------------------------------

    def emit(self, machine: Machine, outcome: Outcome, at: datetime,
             audio: np.ndarray | None) -> None:
        for transition in outcome.transitions:
            self.publish_event(machine, transition, audio)
        if outcome.status_changed:
            self._score_sent_at.pop(machine.name, None)  # the next score goes out at once
            self.publish_state(machine)
            log.info("machine %s: %s%s", machine.name, outcome.status,
                     f" ({machine.decision.reason})" if machine.decision.reason else "")
            self.status_changed = True

    def publish_score(self, machine: Machine, sample: ScoreSample) -> None:
        """Score telemetry, at most one per `score_interval_s` of audio and machine (one
        message a second per machine loads Home Assistant's recorder for nothing), and at
        once after a state change. The web view's feed gets every window."""
        if self.live is not None and sample.threshold is not None:
            self.live.add_score(machine.name, sample.at.timestamp(), sample.score,
                                sample.threshold)
        if not self.score_telemetry or self.publisher is None:
            return
        last = self._score_sent_at.get(machine.name)
        if last is not None and 0.0 <= (sample.at - last).total_seconds() < self.score_interval_s:
            return
        self._score_sent_at[machine.name] = sample.at
        p = self.publisher
        p.send(p.topics.score_message(machine.name, sample), None, machine.name)

    def observe_inference(self, machine: Machine, seconds: float) -> None:
        if self.live is not None:
            self.live.observe_inference(machine.name, seconds)

    def _save_clip(self, machine: Machine, t: Transition, audio: np.ndarray) -> None:
        """Save the alarm's audio; remember its path and URL for the alarm's messages."""
        assert self.clips is not None
        try:
            path = self.clips.save(machine.name, audio, machine.model_rate_hz, t.event_id,
                                   t.at.timestamp())
        except (OSError, EdgeMonitorError) as exc:
            self.counters.clip_errors += 1
            self.health.set_disk_fault(f"cannot save the alarm clip of {machine.name}: {exc}")
            return
        url = f"{self.clip_base_url}/clips/{path.name}" if self.clip_base_url else None
        self._alarm_clips[t.event_id] = (str(path), url)

    def publish_event(self, machine: Machine, t: Transition, audio: np.ndarray | None) -> None:
        detector = machine.setup.detector
        if t.kind == "new" and audio is not None and self.clips is not None:
            self._save_clip(machine, t, audio)
        clip_path, clip_url = self._alarm_clips.get(t.event_id, (None, None))
        if t.kind == "end":
            self._alarm_clips.pop(t.event_id, None)
        event = AlarmEvent(
            type=t.kind,
            event_id=t.event_id,
            machine=machine.name,
            started_at=t.started_at,
            updated_at=t.at,
            peak_score=t.peak_score,
            threshold=t.threshold,
            model_version=detector.model_version if detector else "",
            bank_version=detector.bank_version if detector else "",
            clip_path=clip_path,
            clip_url=clip_url,
            ended_at=t.ended_at,
        )
        if self.live is not None:
            self.live.add_alarm(event.to_dict())
        if self.publisher is not None:  # durable when send() returns: logged after it
            self.publisher.send(self.publisher.topics.event_message(event), KIND_EVENT,
                                f"{t.kind} {t.event_id} ({event.message_id})")
        log.log(logging.WARNING if t.kind == "new" else logging.INFO,
                "machine %s: alarm %s %s message %s peak %.5f threshold %.5f%s", machine.name,
                t.kind, t.event_id, event.message_id, t.peak_score, t.threshold,
                f" clip {clip_path}" if clip_path else "")

    def publish_state(self, machine: Machine) -> None:
        self.update_snapshot()
        if self.publisher is not None:
            d = machine.decision
            state = MachineState(d.status, machine.last_score, machine.threshold,
                                 d.since or utc_now(), d.reason)
            message = self.publisher.topics.state_message(machine.name, state)
            self.publisher.send(message, KIND_STATE, machine.name)

    # Snapshot and logs ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A copy of the latest per-machine states and counters (any thread)."""
        with self._snapshot_lock:
            return dict(self._snapshot)

    def status_line(self) -> str:
        parts = []
        for m in self.machines:
            text = f"{m.name}: {m.decision.status}"
            if m.setup.learner is not None:
                text += f" {m.setup.learner.progress:.0%}"
            parts.append(text)
        return "; ".join(parts)

    def update_snapshot(self) -> None:
        source = self.health.source
        stats = source.stats()
        machines = {}
        for m in self.machines:
            d, det = m.decision, m.setup.detector
            threshold = det.threshold * self.threshold_scale if det else None
            machines[m.name] = {
                "status": d.status,
                "reason": d.reason,
                "since": d.since.isoformat() if d.since else None,
                "score": m.last_score,
                "threshold": threshold,
                "ratio": ratio(m.last_score, threshold),
                "model_version": det.model_version if det else None,
                "bank_version": det.bank_version if det else None,
                "learning_progress": m.setup.learner.progress if m.setup.learner else None,
                "alarm_event_id": d.alarm_event_id,
                "scored_windows": m.scored,
                "model_errors": m.model_errors,
                "level_dbfs": round(m.level_dbfs, 1) if m.level_dbfs is not None else None,
                "silent_s": round(m.silent_s, 1),
                "clipped_windows": m.clipped_run,
            }
        c = self.counters
        snapshot = {
            "machines": machines,
            "windows": c.windows,
            "scored_windows": c.scored_windows,
            "late_windows": c.late_windows,
            "unjudged_windows": c.unjudged_windows,
            "max_lag_s": round(c.max_lag_s, 3),
            "windower_gaps": c.windower_gaps,
            "file_boundaries": c.file_boundaries,
            "clip_errors": c.clip_errors,
            "source_rate_hz": source.sample_rate_hz,
            "source_fault": source.fault,
            "frames": stats.frames,
            "processed_frames": c.frames,
            "dropped_chunks": stats.dropped_chunks,
            "overflows": stats.overflows,
            "source_restarts": stats.restarts,
            "skipped_files": stats.skipped_files,
        }
        with self._snapshot_lock:
            self._snapshot = snapshot

    def log_stats(self, final: bool = False) -> None:
        snap = self.snapshot()
        files = snap["file_boundaries"]
        log.info("%s: %d windows (%d scored, %d late, max lag %.2f s), %d dropped chunks, "
                 "%d overflows, %d gaps, %d frames%s; %s", "final stats" if final else "stats",
                 snap["windows"], snap["scored_windows"], snap["late_windows"],
                 snap["max_lag_s"], snap["dropped_chunks"], snap["overflows"],
                 snap["windower_gaps"], snap["processed_frames"],
                 f", {files} file boundaries (replay, not lost audio)" if files else "",
                 self.status_line())
