"""The processing thread: source chunks in, decisions, MQTT messages and alarm clips out.

One thread owns everything that changes per window, so nothing here needs a lock: it drains
the source, converts each machine's channel to the model's rate as it arrives (one
streaming resampler per channel), cuts it into windows (the windower restarts on any hole in
the audio), scores each window, feeds the machine's decision state machine, and publishes
what changed. Other threads talk
to it only through `submit(fn)`: the function runs on this thread between two chunks, which
is how a reload, an enrolment commit or a rollback swaps a detector atomically between
windows without losing audio.

Faults are judged here too, per machine, in this order: source fault (device lost), no audio
at all, disk error, audio overflow (dropped chunks), silence, clipping. A fault suspends
decisions (an open alarm ends) and clears by itself when the cause goes away.

The watchdog is pinged from this loop only, so a stuck loop gets the service restarted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_monitor.audio_in.capture import AudioSource, Chunk
from edge_monitor.config.sections import (
    Config,
    DecisionSection,
    FaultsConfig,
    PreprocessSection,
)
from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.detector import Detection, Detector
from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.core.stream import WindowStream
from edge_monitor.mqtt.topics import AlarmEvent, MachineState, ScoreSample
from edge_monitor.pipeline.decision import (
    ENROLLING,
    FAULT,
    LEARNING,
    DecisionMachine,
    Outcome,
    Transition,
)
from edge_monitor.pipeline.learning import BankLearner, builtin_detector
from edge_monitor.pipeline.service import Notifier

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.2
DISK_PROBE_NAME = ".write-check"


class Publisher(Protocol):
    """Where states, events and scores go (the MQTT client); calls must never block."""

    def publish_state(self, machine: str, state: MachineState) -> None: ...

    def publish_event(self, event: AlarmEvent) -> None: ...

    def publish_score(self, machine: str, sample: ScoreSample) -> None: ...


class ClipSaver(Protocol):
    """Saves the audio of an alarm and returns where (the clip store)."""

    def save(
        self, machine: str, event_id: str, audio: np.ndarray, sample_rate_hz: int, at: datetime
    ) -> Path: ...


class AudioTap(Protocol):
    """Receives a machine's audio as captured (enrolment recording); must return quickly."""

    def feed(self, audio: np.ndarray, sample_rate_hz: int, start_frame: int) -> None: ...


@dataclass(frozen=True)
class ProcessingSettings:
    """What the loop needs besides the machines: the config's sections as loaded, and what
    the models decide (window length, model rate). Nothing here restates a default."""

    config: Config
    window_s: float
    model_rate_hz: int

    @property
    def hop_s(self) -> float:
        return self.config.windows.hop_s

    @property
    def decision(self) -> DecisionSection:
        return self.config.decision

    @property
    def faults(self) -> FaultsConfig:
        return self.config.faults

    @property
    def preprocess(self) -> PreprocessSection:
        return self.config.preprocess

    @property
    def disk_paths(self) -> tuple[Path, ...]:
        """Directories written to; probed while a disk fault lasts."""
        c = self.config
        return (c.state_dir, c.clip_dir) if c.alarm_audio.enabled else (c.state_dir,)

    @property
    def realtime(self) -> bool:
        return self.config.source.kind == "sounddevice" or self.config.source.replay.realtime


@dataclass
class MachineSetup:
    """One machine as configured: its channel and either a detector or a learner."""

    name: str
    channel: int
    detector: Detector | None = None
    learner: BankLearner | None = None


@dataclass
class Counters:
    frames: int = 0  # source frames taken from the source and processed
    windows: int = 0
    scored_windows: int = 0
    late_windows: int = 0
    unjudged_windows: int = 0
    windower_gaps: int = 0
    clip_errors: int = 0
    max_lag_s: float = 0.0


@dataclass
class _Lane:
    """Runtime state of one machine."""

    setup: MachineSetup
    decision: DecisionMachine
    windows: WindowStream  # the machine's channel at the model's rate, cut into windows
    anchor: float = 0.0  # wall time of model-rate frame 0
    next_frame: int = 0  # model-rate frame of the chunk in hand (or the next one)
    silent_s: float = 0.0
    clipped_run: int = 0
    judge_from_frame: int = 0  # windows starting earlier overlap a fault: never judged
    enrolling: bool = False
    last_score: float | None = None
    last_threshold: float | None = None
    taps: list[AudioTap] = field(default_factory=list)
    scored: int = 0  # windows this lane's detector scored (a swap starts a new lane)
    model_errors: int = 0
    model_error: str | None = None  # the last window's scoring failed: a fault until one works

    @property
    def name(self) -> str:
        return self.setup.name

    def wall_time(self, frame: int) -> datetime:
        rate = self.windows.stream.model_rate_hz
        return datetime.fromtimestamp(self.anchor + frame / rate, timezone.utc)


def _dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20.0 * math.log10(max(rms, 1e-12))


class Processor:
    """Runs the processing loop on its own thread; see the module docstring."""

    def __init__(
        self,
        source: AudioSource,
        settings: ProcessingSettings,
        machines: list[MachineSetup],
        publisher: Publisher | None,
        clips: ClipSaver | None,
        notifier: Notifier,
        stop: threading.Event,
    ) -> None:
        self.source = source
        self.settings = settings
        self.publisher = publisher
        self.clips = clips
        self.notifier = notifier
        # The status line is sent once per loop turn, after every machine has settled: sent
        # at each machine's change it would show the others' stale states (at start, their
        # initial `normal`). READY=1 carries the first one.
        self._status_changed = False
        self.stop_event = stop
        self.counters = Counters()
        self.finished = threading.Event()
        self._lanes = [self._new_lane(m, settings) for m in machines]
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        self._last_chunk_at = time.monotonic()
        self._disk_fault: str | None = None
        self._last_disk_probe = 0.0
        self._last_drop_total = 0
        self._last_drop_at: float | None = None
        self._last_stats_log = time.monotonic()
        self._snapshot: dict[str, Any] = {}
        self._snapshot_lock = threading.Lock()
        self.error: BaseException | None = None

    # Thread control -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="processing", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn` on the processing thread between chunks; the future holds its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self.alive:
            future.set_exception(RuntimeError("the processing loop is not running"))
            return future
        self._calls.put((fn, future))
        return future

    # Operations for other threads (each runs on the processing thread via submit) ------

    def swap_detector(self, machine: str, detector: Detector) -> concurrent.futures.Future[Any]:
        """Replace a machine's detector between two windows (enrolment commit, rollback)."""
        return self.submit(lambda: self._swap_detector(machine, detector))

    def detector(self, machine: str) -> concurrent.futures.Future[Any]:
        """The machine's current detector (None while learning)."""
        return self.submit(lambda: self._lane(machine).setup.detector)

    def add_tap(self, machine: str, tap: AudioTap) -> concurrent.futures.Future[Any]:
        """Send the machine's captured audio to `tap` from the next chunk on."""
        return self.submit(lambda: self._lane(machine).taps.append(tap))

    def remove_tap(self, machine: str, tap: AudioTap) -> concurrent.futures.Future[Any]:
        def remove() -> None:
            taps = self._lane(machine).taps
            if tap in taps:
                taps.remove(tap)
        return self.submit(remove)

    def set_enrolling(self, machine: str, enrolling: bool) -> concurrent.futures.Future[Any]:
        """Suspend (True) or resume (False) decisions while a technician records the machine."""
        def apply() -> None:
            lane = self._lane(machine)
            lane.enrolling = enrolling
            self._settle(lane, self._now())
        return self.submit(apply)

    def reconfigure(
        self, settings: ProcessingSettings, machines: list[MachineSetup],
        source: AudioSource | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Apply a reloaded config between chunks; buffered audio is kept where it can be."""
        return self.submit(lambda: self._reconfigure(settings, machines, source))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the latest per-machine states and counters (any thread)."""
        with self._snapshot_lock:
            return dict(self._snapshot)

    # The loop -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._publish_all_states()
            self.notifier.ready(self._status_line())
            self._status_changed = False
            while not self.stop_event.is_set():
                self._run_calls()
                chunk = self.source.get(GET_TIMEOUT_S)
                if chunk is not None:
                    self._on_chunk(chunk)
                self._check_faults()
                if self._status_changed:
                    self._status_changed = False
                    self.notifier.status(self._status_line())
                self.notifier.ping_watchdog_if_due()
                self._periodic()
                if chunk is None and self.source.finished:
                    log.info("the source has no more audio")
                    break
        except BaseException as exc:  # the daemon must learn that its loop died
            log.exception("the processing loop failed")
            self.error = exc
            self.stop_event.set()
        finally:
            self._run_calls()
            self._close_alarms()
            self._update_snapshot()
            self._log_stats(final=True)
            self.finished.set()

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # reported to the caller, never kills the loop
                future.set_exception(exc)

    def _on_chunk(self, chunk: Chunk) -> None:
        self._last_chunk_at = time.monotonic()
        self.counters.frames += chunk.frames.shape[0]
        rate = chunk.sample_rate_hz
        for lane in self._lanes:
            mono = np.ascontiguousarray(chunk.frames[:, lane.setup.channel])
            for tap in list(lane.taps):
                try:
                    tap.feed(mono, rate, chunk.start_frame)
                except Exception:
                    log.exception("machine %s: an audio tap failed; removing it", lane.name)
                    lane.taps.remove(tap)
            if _dbfs(mono) < self.settings.preprocess.silence_dbfs:
                lane.silent_s += mono.shape[0] / rate
            else:
                lane.silent_s = 0.0
            gaps = lane.windows.gaps
            windows = lane.windows.push(mono, rate, chunk.start_frame)
            stream = lane.windows.stream
            if stream.restarted:
                lane.anchor = chunk.captured_at - stream.out_next / stream.model_rate_hz
            lane.next_frame = stream.chunk_start
            for window in windows:
                self._on_window(lane, window.audio, window.start_frame, window.end_frame, chunk)
            self.counters.windower_gaps += lane.windows.gaps - gaps
            lane.next_frame = stream.out_next

    def _on_window(
        self, lane: _Lane, audio: np.ndarray, start_frame: int, end_frame: int, chunk: Chunk,
    ) -> None:
        """Judge one model-rate window (frames on the lane's model-rate timeline)."""
        s = self.settings
        self.counters.windows += 1
        at = lane.wall_time(end_frame)
        hits = int(np.count_nonzero(np.abs(audio) >= s.preprocess.clip_level))
        clipped = hits >= s.preprocess.clip_fraction * audio.size
        lane.clipped_run = lane.clipped_run + 1 if clipped else 0
        status = self._settle(lane, at)
        model_fault_only = status == FAULT and lane.decision.reason == lane.model_error
        if (status == FAULT and not model_fault_only) or status == ENROLLING or (
            start_frame < lane.judge_from_frame
        ):
            return
        if _dbfs(audio) < s.preprocess.silence_dbfs or lane.clipped_run:
            # A silent or clipped window says nothing reliable about the machine (stopped,
            # a dead input, too much gain) until it lasts long enough to be a fault; judging
            # it would only make false alarms.
            self.counters.unjudged_windows += 1
            return
        setup = lane.setup
        if setup.learner is not None:
            if setup.learner.add(audio, start_frame, end_frame):
                self._finish_learning(lane, at)
            return
        detector = setup.detector
        assert detector is not None
        detection = self._score(lane, detector, audio, at)
        if detection is None:
            return
        threshold = detector.threshold * s.decision.threshold_scale
        self.counters.scored_windows += 1
        lane.scored += 1
        lane.last_score = detection.score
        lane.last_threshold = threshold
        outcome = lane.decision.observe(detection.score, threshold, at)
        if s.config.mqtt.score_telemetry and self.publisher is not None:
            self.publisher.publish_score(lane.name, ScoreSample(detection.score, threshold, at))
        self._emit(lane, outcome, at, audio)
        if s.realtime:
            lag = time.time() - chunk.captured_at
            self.counters.max_lag_s = max(self.counters.max_lag_s, lag)
            if lag > s.hop_s:
                self.counters.late_windows += 1
                log.warning("machine %s: window decided %.2f s after capture (hop %.2f s): "
                            "the box cannot keep up", lane.name, lag, s.hop_s)

    def _score(
        self, lane: _Lane, detector: Detector, audio: np.ndarray, at: datetime
    ) -> Detection | None:
        """Score a window; a model that fails or gives a non-finite score faults the machine
        (a bundle rollout watches for this) instead of stopping the loop."""
        try:
            detection = detector.score(audio)
            if not math.isfinite(detection.score):
                raise EdgeMonitorError(f"the model gave a non-finite score ({detection.score})")
        except Exception as exc:  # any runtime failure of a model, whatever its library
            lane.model_errors += 1
            if lane.model_error is None:
                log.error("machine %s: scoring failed with model %s: %s", lane.name,
                          detector.model_version, exc)
            lane.model_error = f"model error: {exc}"[:300]
            self._settle(lane, at)
            return None
        if lane.model_error is not None:
            log.info("machine %s: the model scores again", lane.name)
            lane.model_error = None
            self._settle(lane, at)
        return detection

    def _finish_learning(self, lane: _Lane, at: datetime) -> None:
        learner = lane.setup.learner
        assert learner is not None
        try:
            bank = learner.build()
        except (OSError, EdgeMonitorError) as exc:
            self._set_disk_fault(f"cannot save the learned bank of {lane.name}: {exc}")
            return
        lane.setup.detector = builtin_detector(
            lane.name, learner.embedder, bank, self.settings.decision.false_alarm_rate,
            learner.preprocess_config,
        )
        lane.setup.learner = None
        log.info("machine %s: learning done; threshold %.5f", lane.name,
                 lane.setup.detector.threshold)
        self._settle(lane, at)

    # Status and faults ----------------------------------------------------------------

    def _fault_of(self, lane: _Lane) -> str | None:
        s = self.settings
        source_fault = self.source.fault
        if source_fault:
            return source_fault
        quiet_s = time.monotonic() - self._last_chunk_at
        if quiet_s > s.faults.no_audio_s and not self.source.finished:
            return f"no audio from the input for {quiet_s:.0f} s"
        if self._disk_fault:
            return self._disk_fault
        if self._last_drop_at is not None:
            return "audio overflow: the processing could not keep up and audio was dropped"
        if lane.silent_s >= s.faults.silence_s:
            return (f"silence: input below {s.preprocess.silence_dbfs:g} dBFS for "
                    f"{s.faults.silence_s:g} s (microphone dead, muted or unplugged?)")
        if lane.clipped_run >= s.faults.clipping_windows:
            return (f"clipping: {s.faults.clipping_windows} or more windows in a row reach full "
                    "scale (lower the input gain)")
        return lane.model_error

    def _settle(self, lane: _Lane, at: datetime) -> str | None:
        """Bring the lane's status in line with faults, enrolment and learning.

        Returns the suspended status (fault, enrolling, learning), or None when windows are
        judged by the detector.
        """
        fault = self._fault_of(lane)
        decision = lane.decision
        if fault is not None:
            wanted, reason = FAULT, fault
        elif lane.enrolling:
            wanted, reason = ENROLLING, None
        elif lane.setup.learner is not None:
            wanted, reason = LEARNING, None
        else:
            if decision.status == FAULT:
                log.info("machine %s: fault cleared", lane.name)
                lane.judge_from_frame = lane.next_frame
            if decision.status in (FAULT, LEARNING, ENROLLING):
                self._emit(lane, decision.resume(at), at, None)
            return None
        if decision.status != wanted or decision.reason != reason:
            if decision.status == FAULT and wanted != FAULT:
                log.info("machine %s: fault cleared", lane.name)
                lane.judge_from_frame = lane.next_frame
            self._emit(lane, decision.suspend(wanted, at, reason), at, None)
        return wanted

    def _check_faults(self) -> None:
        now = time.monotonic()
        stats = self.source.stats()
        drops = stats.dropped_chunks + stats.overflows
        if drops > self._last_drop_total:
            log.warning("audio dropped: %d chunk(s) the queue could not hold, %d device "
                        "overflow(s) so far", stats.dropped_chunks, stats.overflows)
            self._last_drop_total = drops
            self._last_drop_at = now
        elif self._last_drop_at is not None and now - self._last_drop_at > self.settings.window_s:
            self._last_drop_at = None
        if self._disk_fault and now - self._last_disk_probe > self.settings.faults.disk_check_s:
            self._probe_disk()
        at = self._now()
        for lane in self._lanes:
            self._settle(lane, at)

    def _probe_disk(self) -> None:
        self._last_disk_probe = time.monotonic()
        for directory in self.settings.disk_paths:
            try:
                atomic_write_text(Path(directory) / DISK_PROBE_NAME, f"{time.time()}\n")
            except OSError as exc:
                log.warning("%s still not writable: %s", directory, exc)
                return
        log.info("%s writable again; disk fault cleared",
                 ", ".join(str(p) for p in self.settings.disk_paths))
        self._disk_fault = None

    def _set_disk_fault(self, message: str) -> None:
        log.error("disk error: %s", message)
        self._disk_fault = f"disk error: {message}"
        self._last_disk_probe = time.monotonic()

    def _now(self) -> datetime:
        return datetime.now(timezone.utc)

    # Publishing -----------------------------------------------------------------------

    def _emit(self, lane: _Lane, outcome: Outcome, at: datetime, audio: np.ndarray | None) -> None:
        for transition in outcome.transitions:
            self._publish_event(lane, transition, audio)
        if outcome.status_changed:
            self._publish_state(lane)
            log.info("machine %s: %s%s", lane.name, outcome.status,
                     f" ({lane.decision.reason})" if lane.decision.reason else "")
            self._status_changed = True

    def _publish_event(self, lane: _Lane, t: Transition, audio: np.ndarray | None) -> None:
        detector = lane.setup.detector
        clip_path = None
        if t.kind == "new" and audio is not None and self.clips is not None:
            try:
                clip_path = str(self.clips.save(lane.name, t.event_id, audio,
                                                self.settings.model_rate_hz, t.at))
            except (OSError, EdgeMonitorError) as exc:
                self.counters.clip_errors += 1
                self._set_disk_fault(f"cannot save the alarm clip of {lane.name}: {exc}")
        log.log(logging.WARNING if t.kind == "new" else logging.INFO,
                "machine %s: alarm %s %s peak %.5f threshold %.5f%s", lane.name, t.kind,
                t.event_id, t.peak_score, t.threshold, f" clip {clip_path}" if clip_path else "")
        if self.publisher is None:
            return
        self.publisher.publish_event(AlarmEvent(
            type=t.kind,
            event_id=t.event_id,
            machine=lane.name,
            started_at=t.started_at,
            updated_at=t.at,
            peak_score=t.peak_score,
            threshold=t.threshold,
            model_version=detector.model_version if detector else "",
            bank_version=detector.bank_version if detector else "",
            clip_path=clip_path,
            ended_at=t.ended_at,
        ))

    def _machine_state(self, lane: _Lane) -> MachineState:
        d = lane.decision
        return MachineState(d.status, lane.last_score, lane.last_threshold,
                            d.since or self._now(), d.reason)

    def _publish_state(self, lane: _Lane) -> None:
        self._update_snapshot()
        if self.publisher is not None:
            self.publisher.publish_state(lane.name, self._machine_state(lane))

    def _publish_all_states(self) -> None:
        at = self._now()
        for lane in self._lanes:
            self._settle(lane, at)
            self._publish_state(lane)

    def _status_line(self) -> str:
        parts = []
        for lane in self._lanes:
            text = f"{lane.name}: {lane.decision.status}"
            if lane.setup.learner is not None:
                text += f" {lane.setup.learner.progress:.0%}"
            parts.append(text)
        return "; ".join(parts)

    def _update_snapshot(self) -> None:
        stats = self.source.stats()
        machines = {}
        for lane in self._lanes:
            d, det = lane.decision, lane.setup.detector
            machines[lane.name] = {
                "status": d.status,
                "reason": d.reason,
                "since": d.since.isoformat() if d.since else None,
                "score": lane.last_score,
                "threshold": (det.threshold * self.settings.decision.threshold_scale
                              if det else None),
                "model_version": det.model_version if det else None,
                "bank_version": det.bank_version if det else None,
                "learning_progress": lane.setup.learner.progress if lane.setup.learner else None,
                "alarm_event_id": d.alarm_event_id,
                "scored_windows": lane.scored,
                "model_errors": lane.model_errors,
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
            "clip_errors": c.clip_errors,
            "source_rate_hz": self.source.sample_rate_hz,
            "source_fault": self.source.fault,
            "frames": stats.frames,
            "processed_frames": c.frames,
            "dropped_chunks": stats.dropped_chunks,
            "overflows": stats.overflows,
            "source_restarts": stats.restarts,
            "skipped_files": stats.skipped_files,
        }
        with self._snapshot_lock:
            self._snapshot = snapshot

    def _periodic(self) -> None:
        now = time.monotonic()
        self._update_snapshot()
        if now - self._last_stats_log >= self.settings.config.logging.stats_interval_s:
            self._last_stats_log = now
            self._log_stats()

    def _log_stats(self, final: bool = False) -> None:
        snap = self.snapshot()
        log.info("%s: %d windows (%d scored, %d late, max lag %.2f s), %d dropped chunks, "
                 "%d overflows, %d gaps, %d frames; %s", "final stats" if final else "stats",
                 snap["windows"], snap["scored_windows"], snap["late_windows"],
                 snap["max_lag_s"], snap["dropped_chunks"], snap["overflows"],
                 snap["windower_gaps"], snap["processed_frames"], self._status_line())

    def _close_alarms(self) -> None:
        at = self._now()
        for lane in self._lanes:
            for transition in lane.decision.close(at):
                self._publish_event(lane, transition, None)
                self._publish_state(lane)

    # Changes applied on this thread ----------------------------------------------------

    def _lane(self, machine: str) -> _Lane:
        for lane in self._lanes:
            if lane.name == machine:
                return lane
        raise EdgeMonitorError(f"unknown machine {machine!r}: configured are "
                               f"{[lane.name for lane in self._lanes]}")

    def _swap_detector(self, machine: str, detector: Detector) -> None:
        lane = self._lane(machine)
        old = lane.setup.detector
        lane.setup.detector = detector
        lane.setup.learner = None
        log.info("machine %s: detector swapped (bank %s -> %s, threshold %.5f)", machine,
                 old.bank_version if old else "none", detector.bank_version, detector.threshold)
        self._update_snapshot()

    def _new_lane(self, setup: MachineSetup, settings: ProcessingSettings) -> _Lane:
        return _Lane(
            setup=setup,
            decision=DecisionMachine(settings.decision),
            windows=WindowStream(settings.model_rate_hz, settings.window_s, settings.hop_s),
        )

    def _reconfigure(
        self, settings: ProcessingSettings, machines: list[MachineSetup],
        source: AudioSource | None,
    ) -> None:
        old_lanes = {lane.name: lane for lane in self._lanes}
        same_windows = (settings.window_s, settings.hop_s, settings.model_rate_hz) == (
            self.settings.window_s, self.settings.hop_s, self.settings.model_rate_hz)
        lanes = []
        at = self._now()
        for setup in machines:
            old = old_lanes.pop(setup.name, None)
            if old is None:
                lanes.append(self._new_lane(setup, settings))
                continue
            if setup.learner is not None and old.setup.learner is not None:
                setup.learner = old.setup.learner  # keep what was learned so far
            lane = self._new_lane(setup, settings)
            lane.decision, lane.taps, lane.enrolling = old.decision, old.taps, old.enrolling
            lane.last_score, lane.last_threshold = old.last_score, old.last_threshold
            lane.silent_s = old.silent_s
            if settings.decision != self.settings.decision:
                for transition in old.decision.close(at):
                    self._publish_event(old, transition, None)
                lane.decision = DecisionMachine(settings.decision, old.decision.status)
            if same_windows and setup.channel == old.setup.channel and source is None:
                # No audio lost across the reload: buffered samples and resampler state stay.
                lane.windows, lane.anchor, lane.next_frame = old.windows, old.anchor, old.next_frame
            lanes.append(lane)
        for gone in old_lanes.values():
            for transition in gone.decision.close(at):
                self._publish_event(gone, transition, None)
        self._lanes = lanes
        self.settings = settings
        if source is not None:
            self.source = source
            self._last_chunk_at = time.monotonic()
            self._last_drop_total = 0
        self._publish_all_states()
        log.info("configuration applied: %s", self._status_line())

