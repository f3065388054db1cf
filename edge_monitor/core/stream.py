"""The streaming entry point: audio chunks of any length at any rate in, window scores out.

    scorer = StreamingDetector(detector, hop_s=1.0)
    for chunk in chunks:                       # any length, any rate
        for result in scorer.push(chunk, 48000):
            print(result.start_s, result.score)
    scorer.finish()                            # end of a recording: the resampler's tail

Three layers, each usable alone:
- `ModelRateStream` converts one channel to the model's rate as it arrives (one soxr stream,
  `edge_monitor.core.audio_io.StreamResampler`) on one frame timeline; a hole in the input
  or a new input rate restarts it;
- `WindowStream` cuts that into rolling windows (`Windower`), starting over after a hole;
- `StreamingDetector` conditions and scores each window with a `Detector`, exactly as the
  daemon does. Windows depend only on the samples, never on how they were cut into chunks.

The daemon's processing loop runs a `WindowStream` per machine (it judges faults between
windowing and scoring); `edge-monitor score`, enrolment and the bench tools use the same
objects, so every path resamples and windows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_monitor.core.audio_io import StreamResampler
from edge_monitor.core.detector import Detection, Detector
from edge_monitor.core.windowing import Window, Windower


class ModelRateStream:
    """One channel converted to the model's rate as it arrives, with its own timeline.

    Frames count model-rate samples: `chunk_start` is where the chunk just converted begins,
    `out_next` where the next one will. A hole in the input makes the timeline jump (so a
    windower starts over) and `restarted` is True for that chunk, as for the first one and
    for a new input rate.
    """

    def __init__(self, model_rate_hz: int) -> None:
        self.model_rate_hz = model_rate_hz
        self.in_rate_hz = 0
        self.in_expected: int | None = None
        self.out_next = 0
        self.chunk_start = 0
        self.restarted = False
        self._resampler: StreamResampler | None = None

    def convert(self, mono: np.ndarray, rate_hz: int, start_frame: int | None = None) -> np.ndarray:
        """Model-rate samples for `mono` at `rate_hz`; `start_frame` is its input frame
        (None: follows on from the previous chunk)."""
        if start_frame is None:
            start_frame = self.in_expected if self.in_expected is not None else 0
        self.restarted = rate_hz != self.in_rate_hz or start_frame != self.in_expected
        if self.restarted:
            if self.in_expected is not None:
                lost = max(0, start_frame - self.in_expected)
                self.out_next += 1 + round(lost * self.model_rate_hz / max(rate_hz, 1))
            self.in_rate_hz = rate_hz
            self._resampler = StreamResampler(rate_hz, self.model_rate_hz)
        assert self._resampler is not None
        self.in_expected = start_frame + mono.shape[0]
        return self._take(self._resampler.push(mono))

    def finish(self) -> np.ndarray:
        """The resampler's held-back tail, at the end of a recording."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._take(self._resampler.push(np.zeros(0, dtype=np.float32), last=True))
        self._resampler = StreamResampler(self.in_rate_hz, self.model_rate_hz)
        self.in_expected = None
        return tail

    def _take(self, out: np.ndarray) -> np.ndarray:
        self.chunk_start = self.out_next
        self.out_next += out.shape[0]
        return out


class WindowStream:
    """Chunks of any rate in, the model-rate windows they complete out."""

    def __init__(self, model_rate_hz: int, window_s: float, hop_s: float) -> None:
        self.stream = ModelRateStream(model_rate_hz)
        self.windower = Windower(model_rate_hz, window_s, hop_s)

    @property
    def gaps(self) -> int:
        """Times the windows started over because audio was lost."""
        return self.windower.gaps

    def push(self, mono: np.ndarray, rate_hz: int, start_frame: int | None = None) -> list[Window]:
        audio = self.stream.convert(mono, rate_hz, start_frame)
        return self.windower.push(audio, self.stream.chunk_start)

    def finish(self) -> list[Window]:
        """Windows that the resampler's tail completes (end of a recording)."""
        tail = self.stream.finish()
        return self.windower.push(tail, self.stream.chunk_start)


@dataclass(frozen=True)
class WindowScore:
    """One scored window: where it lies on the model-rate timeline, and its detection."""

    start_s: float
    end_s: float
    detection: Detection

    @property
    def score(self) -> float:
        return self.detection.score


class StreamingDetector:
    """A detector fed like openWakeWord's `Model.predict`: push chunks, get window scores."""

    def __init__(self, detector: Detector, hop_s: float | None = None) -> None:
        self.detector = detector
        rate = detector.sample_rate_hz
        self.windows = WindowStream(rate, detector.window_s, hop_s or detector.window_s)

    def push(self, audio: np.ndarray, sample_rate_hz: int) -> list[WindowScore]:
        """Score the windows this chunk (mono, any length) completes, oldest first."""
        return self._score(self.windows.push(np.asarray(audio, np.float32), sample_rate_hz))

    def finish(self) -> list[WindowScore]:
        """Score what the end of the recording completes."""
        return self._score(self.windows.finish())

    def _score(self, windows: list[Window]) -> list[WindowScore]:
        rate = self.detector.sample_rate_hz
        return [WindowScore(w.start_frame / rate, w.end_frame / rate, self.detector.score(w.audio))
                for w in windows]
