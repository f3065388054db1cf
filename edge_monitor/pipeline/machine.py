"""One machine's loop: its channel's audio in, windows judged, learned or scored, decided.

Each chunk's channel goes to the audio taps (an enrolment recording), is measured for
silence, and is converted and cut into model-rate windows (`edge_monitor.core.stream`). A
window is judged only when the input can be trusted: not during a fault or an enrolment,
not when it overlaps audio from before a fault, not when it is silent, clipped or not
finite (`edge_monitor.core.preprocess.check_input`, the check `edge-monitor score` makes
too; silence and clipping say nothing about the machine until they last long enough to be
a fault). Then the learner (built-in or bundle model) learns it, or the detector scores it,
the decision machine decides and the alarm recorder keeps the windows of an open alarm (for
"this alarm was normal").

The machine's own faults, after the shared ones (`edge_monitor.pipeline.health`): silence,
clipping, a model that fails to score.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from edge_monitor.audio_in.capture import Chunk
from edge_monitor.core.detector import Detection, Detector
from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.core.preprocess import check_input
from edge_monitor.core.stream import WindowStream
from edge_monitor.mqtt.topics import ScoreSample
from edge_monitor.pipeline.alarm_recorder import AlarmRecorder
from edge_monitor.pipeline.decision import ENROLLING, FAULT, LEARNING, DecisionMachine
from edge_monitor.pipeline.health import InputHealth
from edge_monitor.pipeline.learning import BankLearner
from edge_monitor.pipeline.reporting import Reporter
from edge_monitor.pipeline.settings import Counters, ProcessingSettings

log = logging.getLogger(__name__)


class AudioTap(Protocol):
    """Receives a machine's audio as captured (enrolment recording); must return quickly."""

    def feed(self, audio: np.ndarray, sample_rate_hz: int, start_frame: int) -> None: ...


@dataclass
class MachineSetup:
    """One machine as configured: its channel and either a detector or a learner, and where
    the detector's bank came from ('from the bundle', 'learned on site', 'enrolled on site';
    `edge-monitor check` prints it)."""

    name: str
    channel: int
    detector: Detector | None = None
    learner: BankLearner | None = None
    bank_origin: str | None = None


def dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20.0 * math.log10(max(rms, 1e-12))


class Machine:
    """The runtime state of one machine; owned by the processing thread."""

    def __init__(self, setup: MachineSetup, settings: ProcessingSettings, health: InputHealth,
                 reporter: Reporter, counters: Counters) -> None:
        self.setup = setup
        self.settings = settings
        self.health = health
        self.reporter = reporter
        self.counters = counters
        self.decision = DecisionMachine(settings.decision)
        self.recorder = AlarmRecorder(setup.name, settings.config.state_dir,
                                      settings.model_rate_hz, settings.decision.n)
        self.windows = WindowStream(settings.model_rate_hz, settings.window_s, settings.hop_s)
        self.anchor = 0.0  # wall time of model-rate frame 0
        self.next_frame = 0  # model-rate frame of the chunk in hand (or the next one)
        self.silent_s = 0.0
        self.clipped_run = 0
        self.broken_input: str | None = None  # the last window held NaN or inf: a fault
        self.judge_from_frame = 0  # windows starting earlier overlap a fault: never judged
        self.enrolling = False
        self.last_score: float | None = None
        self.level_dbfs: float | None = None  # RMS of the channel's last chunk (level meter)
        self.last_threshold: float | None = None
        self.taps: list[AudioTap] = []
        self.scored = 0  # windows this detector scored (a swap or reload starts again)
        self.model_errors = 0
        self.model_error: str | None = None  # the last window failed to score: a fault

    @property
    def name(self) -> str:
        return self.setup.name

    @property
    def threshold(self) -> float | None:
        """The alarm line in force: the detector's (known as soon as learning ends, before a
        window is scored), else the last one used."""
        detector = self.setup.detector
        if detector is None:
            return self.last_threshold
        return detector.threshold * self.settings.decision.threshold_scale

    @property
    def model_rate_hz(self) -> int:
        return self.windows.stream.model_rate_hz

    def wall_time(self, frame: int) -> datetime:
        return datetime.fromtimestamp(self.anchor + frame / self.model_rate_hz, timezone.utc)

    # Audio in -------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> None:
        """This machine's channel of one chunk: taps, silence, windows."""
        mono = np.ascontiguousarray(chunk.frames[:, self.setup.channel])
        rate = chunk.sample_rate_hz
        for tap in list(self.taps):
            try:
                tap.feed(mono, rate, chunk.start_frame)
            except Exception:
                log.exception("machine %s: an audio tap failed; removing it", self.name)
                self.taps.remove(tap)
        self.level_dbfs = dbfs(mono)
        if self.level_dbfs < self.settings.preprocess.silence_dbfs:
            self.silent_s += mono.shape[0] / rate
        else:
            self.silent_s = 0.0
        gaps = self.windows.gaps
        windows = self.windows.push(mono, rate, chunk.start_frame)
        stream = self.windows.stream
        if stream.restarted:
            self.anchor = chunk.captured_at - stream.out_next / stream.model_rate_hz
        self.next_frame = stream.chunk_start
        for window in windows:
            self._on_window(window.audio, window.start_frame, window.end_frame, chunk)
        restarts = self.windows.gaps - gaps
        if chunk.file is not None and chunk.file_offset_frame == 0:
            self.counters.file_boundaries += restarts  # a replay's next recording
        else:
            self.counters.windower_gaps += restarts
        self.next_frame = stream.out_next

    def _on_window(self, audio: np.ndarray, start_frame: int, end_frame: int,
                   chunk: Chunk) -> None:
        """Judge one model-rate window (frames on this machine's model-rate timeline)."""
        s = self.settings
        self.counters.windows += 1
        at = self.wall_time(end_frame)
        check = check_input(audio, s.preprocess)
        self.clipped_run = self.clipped_run + 1 if check.clipped else 0
        self.broken_input = None if check.finite else check.problem(s.preprocess)
        status = self.settle(at)
        model_fault_only = status == FAULT and self.decision.reason == self.model_error
        if (status == FAULT and not model_fault_only) or status == ENROLLING or (
            start_frame < self.judge_from_frame
        ):
            return
        if check.problem(s.preprocess) is not None:  # as `edge-monitor score` refuses a file
            self.counters.unjudged_windows += 1
            return
        if self.setup.learner is not None:
            self._learn(self.setup.learner, audio, start_frame, end_frame, at)
            return
        detector = self.setup.detector
        assert detector is not None
        detection = self._score(detector, audio, at)
        if detection is None:
            return
        threshold = detector.threshold * s.decision.threshold_scale
        self.counters.scored_windows += 1
        self.scored += 1
        self.last_score, self.last_threshold = detection.score, threshold
        outcome = self.decision.observe(detection.score, threshold, at)
        try:
            self.recorder.observe(detector, audio, start_frame, end_frame, detection, threshold,
                                  self.decision.alarm_event_id)
        except OSError as exc:
            self.health.set_disk_fault(f"cannot save the alarm windows of {self.name}: {exc}")
        self.reporter.emit(self, outcome, at, audio)  # first: a state change sends this score
        self.reporter.publish_score(self, ScoreSample(detection.score, threshold, at))
        if s.realtime:
            lag = time.time() - chunk.captured_at
            self.counters.max_lag_s = max(self.counters.max_lag_s, lag)
            if lag > s.hop_s:
                self.counters.late_windows += 1
                log.warning("machine %s: window decided %.2f s after capture (hop %.2f s): "
                            "the box cannot keep up", self.name, lag, s.hop_s)

    def _score(self, detector: Detector, audio: np.ndarray, at: datetime) -> Detection | None:
        """Score a window; a model that fails or gives a non-finite score faults the machine
        (a bundle rollout watches for this) instead of stopping the loop."""
        try:
            started = time.perf_counter()
            detection = detector.score(audio)
            self.reporter.observe_inference(self, time.perf_counter() - started)
            if not math.isfinite(detection.score):
                raise EdgeMonitorError(f"the model gave a non-finite score ({detection.score})")
        except Exception as exc:  # any runtime failure of a model, whatever its library
            self._model_failed(detector.model_version, exc, at)
            return None
        self._model_ok(at)
        return detection

    def _learn(self, learner: BankLearner, audio: np.ndarray, start_frame: int, end_frame: int,
               at: datetime) -> None:
        """Offer a window to the learner; a bundle model that fails while learning faults the
        machine as in scoring, and learning goes on once it embeds again."""
        try:
            done = learner.add(audio, start_frame, end_frame)
        except Exception as exc:  # any runtime failure of a model, whatever its library
            self._model_failed(learner.model.version, exc, at)
            return
        self._model_ok(at)
        if done:
            self._finish_learning(at)

    def _model_failed(self, model_version: str, exc: Exception, at: datetime) -> None:
        self.model_errors += 1
        if self.model_error is None:
            log.error("machine %s: model %s failed: %s", self.name, model_version, exc)
        self.model_error = f"model error: {exc}"[:300]
        self.settle(at)

    def _model_ok(self, at: datetime) -> None:
        if self.model_error is not None:
            log.info("machine %s: the model works again", self.name)
            self.model_error = None
            self.settle(at)

    def _finish_learning(self, at: datetime) -> None:
        learner = self.setup.learner
        assert learner is not None
        try:
            bank = learner.build()
        except (OSError, EdgeMonitorError) as exc:
            self.health.set_disk_fault(f"cannot save the learned bank of {self.name}: {exc}")
            return
        self.setup.detector = learner.detector(bank, self.settings.decision.false_alarm_rate)
        self.setup.learner = None
        log.info("machine %s: learning done; threshold %.5f", self.name,
                 self.setup.detector.threshold)
        self.settle(at)

    # Status ---------------------------------------------------------------------------

    def fault(self) -> str | None:
        s = self.settings
        shared = self.health.fault()
        if shared:
            return shared
        if self.silent_s >= s.faults.silence_s:
            return (f"silence: input below {s.preprocess.silence_dbfs:g} dBFS for "
                    f"{s.faults.silence_s:g} s (microphone dead, muted or unplugged?)")
        if self.clipped_run >= s.faults.clipping_windows:
            return (f"clipping: {s.faults.clipping_windows} or more windows in a row reach full "
                    "scale (lower the input gain)")
        return self.broken_input or self.model_error

    def settle(self, at: datetime) -> str | None:
        """Bring the status in line with faults, enrolment and learning.

        Returns the suspended status (fault, enrolling, learning), or None when windows are
        judged by the detector.
        """
        fault = self.fault()
        decision = self.decision
        if fault is not None:
            wanted, reason = FAULT, fault
        elif self.enrolling:
            wanted, reason = ENROLLING, None
        elif self.setup.learner is not None:
            wanted, reason = LEARNING, None
        else:
            if decision.status == FAULT:
                log.info("machine %s: fault cleared", self.name)
                self.judge_from_frame = self.next_frame
            if decision.status in (FAULT, LEARNING, ENROLLING):
                self.reporter.emit(self, decision.resume(at), at, None)
            return None
        if decision.status != wanted or decision.reason != reason:
            if decision.status == FAULT and wanted != FAULT:
                log.info("machine %s: fault cleared", self.name)
                self.judge_from_frame = self.next_frame
            self.reporter.emit(self, decision.suspend(wanted, at, reason), at, None)
        return wanted

    def close_alarm(self, at: datetime) -> None:
        """End an open alarm (shutdown, a machine removed by a reload)."""
        for transition in self.decision.close(at):
            self.reporter.publish_event(self, transition, None)
            self.reporter.publish_state(self)

    def carry_over(self, old: Machine, same_windows: bool, source_kept: bool) -> None:
        """Take what a reload keeps from this machine's previous incarnation."""
        learner, old_learner = self.setup.learner, old.setup.learner
        if learner is not None and old_learner is not None and (
            learner.fingerprint == old_learner.fingerprint
        ):
            self.setup.learner = old_learner  # keep what was learned so far, with this model
        self.taps, self.enrolling = old.taps, old.enrolling
        self.last_score, self.last_threshold = old.last_score, old.last_threshold
        self.silent_s, self.level_dbfs = old.silent_s, old.level_dbfs
        if self.settings.decision == old.settings.decision:
            old.recorder.state_dir = self.recorder.state_dir  # the open alarm's windows too
            self.decision, self.recorder = old.decision, old.recorder
        else:
            for transition in old.decision.close(datetime.now(timezone.utc)):
                self.reporter.publish_event(old, transition, None)
            self.decision = DecisionMachine(self.settings.decision, old.decision.status)
        if same_windows and self.setup.channel == old.setup.channel and source_kept:
            # No audio lost across the reload: buffered samples and resampler state stay.
            self.windows, self.anchor, self.next_frame = old.windows, old.anchor, old.next_frame
