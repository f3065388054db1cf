"""Records the windows that made one machine's alarms, for "this alarm was normal" feedback.

On the processing thread, after each scored window: a window above the alarm line is
remembered with its embeddings (the last `n` of the decision's k-of-n history, so the
windows that started an alarm are known when it starts); while an alarm is open, its hot
windows are added to its record and the record is saved (`edge_monitor.enrolment.
alarm_windows`). Only windows that do not overlap the last one kept are recorded, at most
`MAX_WINDOWS` an alarm. Each kept window is judged by the enrolment quality gate's window
test at once, since its audio is not kept.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_monitor.core.detector import Detection, Detector
from edge_monitor.core.preprocess import preprocess
from edge_monitor.enrolment import alarm_windows
from edge_monitor.enrolment.alarm_windows import AlarmWindows
from edge_monitor.enrolment.quality_gate import window_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Hot:
    start_frame: int
    end_frame: int
    embeddings: dict[str, np.ndarray]
    problem: str | None


class AlarmRecorder:
    """The windows of one machine's open alarm; owned by the processing thread."""

    def __init__(self, machine: str, state_dir: Path, model_rate_hz: int, history: int) -> None:
        self.machine = machine
        self.state_dir = Path(state_dir)
        self.model_rate_hz = model_rate_hz
        self._recent: deque[_Hot] = deque(maxlen=history)
        self._last_end = 0  # model-rate frame: the next window kept starts here or later
        self.record: AlarmWindows | None = None

    def observe(self, detector: Detector, audio: np.ndarray, start_frame: int, end_frame: int,
                detection: Detection, threshold: float, event_id: str | None) -> None:
        """One scored window; `event_id` is the alarm open after it (None: no alarm).
        Raises OSError when the record cannot be saved."""
        if detection.score > threshold and start_frame >= self._last_end:  # could be kept
            problem = window_problem(audio, preprocess(audio, detector.sample_rate_hz,
                                                       detector.preprocess_config))
            vectors = {name: np.array(v, dtype=np.float32)  # a copy: a runtime may reuse it
                       for name, v in detection.embeddings.items()}
            self._recent.append(_Hot(start_frame, end_frame, vectors, problem))
        else:
            self._recent.append(_Hot(start_frame, end_frame, {}, None))
        if event_id is None:
            self.record = None
            return
        added = False
        if self.record is None or self.record.event_id != event_id:
            self.record = AlarmWindows(self.machine, event_id, detector.model_version,
                                       detector.bank_version, detector.window_s)
            candidates = list(self._recent)  # the windows that started it
        else:
            candidates = [self._recent[-1]]
        for hot in candidates:
            if hot.embeddings and hot.start_frame >= self._last_end and not self.record.full:
                self.record.add(f"alarm-{event_id}@{hot.start_frame}",
                                hot.start_frame / self.model_rate_hz, hot.embeddings,
                                hot.problem)
                self._last_end = hot.end_frame
                added = True
        if added:
            alarm_windows.save(self.state_dir, self.record)
