"""Rolling analysis windows from a stream of audio chunks of any size.

`Windower(sample_rate_hz, window_s, hop_s).push(samples, start_frame)` returns the windows
completed by this chunk: each `Window.audio` holds exactly `window_frames` samples (float32,
a copy the caller may keep), the first ends `window_frames` samples after the stream (or the
last gap) began, and each next one `hop_frames` later. The windows depend only on the
samples, never on how the stream was cut into chunks (tested bit-exact).

Memory is bounded: one ring buffer of `window_frames` samples, whatever the chunk sizes.
A `start_frame` that does not follow on from the previous chunk means audio was lost; the
windower then starts over (counted in `gaps`), so no window ever splices audio across a hole.

It runs at whatever rate it is given: `edge_monitor.core.stream.WindowStream` feeds it audio
already converted to the model's rate, chunk by chunk, by the one streaming resampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_monitor.core.errors import ConfigError

# Analysis windows the runtime accepts (config and bundle manifests alike): shorter holds too
# little of a machine's cycle to judge, longer makes a ring buffer of minutes per machine.
MIN_WINDOW_S = 0.5
MAX_WINDOW_S = 60.0


@dataclass(frozen=True)
class Window:
    """One analysis window."""

    audio: np.ndarray  # float32, shape (window_frames,)
    end_frame: int  # source frame one past the window's last sample
    sequence: int  # 0, 1, 2, ... over the windower's life (gaps do not reset it)

    @property
    def start_frame(self) -> int:
        return self.end_frame - int(self.audio.shape[0])


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: must be a number of seconds, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name}: must be greater than 0 s, got {value!r}")
    return float(value)


class Windower:
    """Cuts a chunked stream into windows of `window_s` every `hop_s` (hop_s <= window_s)."""

    def __init__(self, sample_rate_hz: int, window_s: float, hop_s: float) -> None:
        if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or (
            sample_rate_hz < 1
        ):
            raise ConfigError(f"sample_rate_hz: must be a whole number > 0, got {sample_rate_hz!r}")
        window_s = _seconds("window_s", window_s)
        hop_s = _seconds("hop_s", hop_s)
        if hop_s > window_s:
            raise ConfigError(
                f"hop_s: must not exceed window_s ({window_s} s), got {hop_s} s; "
                "a longer hop would skip audio between windows"
            )
        self.sample_rate_hz = sample_rate_hz
        self.window_frames = round(window_s * sample_rate_hz)
        self.hop_frames = round(hop_s * sample_rate_hz)
        if self.hop_frames < 1:
            raise ConfigError(
                f"hop_s: {hop_s} s is shorter than one sample at {sample_rate_hz} Hz"
            )
        self._ring = np.zeros(self.window_frames, dtype=np.float32)
        self._write = 0  # next ring position to write; also the oldest sample when full
        self._seen = 0  # samples since the stream (or last gap) began
        self._next_end = self.window_frames  # `_seen` at which the next window completes
        self._expected_frame: int | None = None
        self._sequence = 0
        self.gaps = 0

    def reset(self) -> None:
        """Forget buffered audio; the next window needs a full `window_s` of new samples."""
        self._write = 0
        self._seen = 0
        self._next_end = self.window_frames
        self._expected_frame = None

    @property
    def buffered_frames(self) -> int:
        """Samples held towards the next window (at most `window_frames`)."""
        return min(self._seen, self.window_frames)

    def push(self, samples: np.ndarray, start_frame: int | None = None) -> list[Window]:
        """Add mono samples; return the windows they complete, oldest first.

        `start_frame` is the source frame of `samples[0]`; None means "follows on".
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"push() takes mono 1-D samples, got shape {x.shape}")
        if start_frame is None:
            start_frame = self._expected_frame if self._expected_frame is not None else 0
        elif self._expected_frame is not None and start_frame != self._expected_frame:
            self.reset()
            self.gaps += 1
        self._expected_frame = start_frame + x.shape[0]
        windows: list[Window] = []
        pos = 0
        while pos < x.shape[0]:
            take = min(x.shape[0] - pos, self._next_end - self._seen)
            self._append(x[pos : pos + take])
            pos += take
            self._seen += take
            if self._seen == self._next_end:
                windows.append(
                    Window(
                        audio=self._snapshot(),
                        end_frame=start_frame + pos,
                        sequence=self._sequence,
                    )
                )
                self._sequence += 1
                self._next_end += self.hop_frames
        return windows

    def _append(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n >= self.window_frames:
            self._ring[:] = x[n - self.window_frames :]
            self._write = 0
            return
        first = min(n, self.window_frames - self._write)
        self._ring[self._write : self._write + first] = x[:first]
        self._ring[: n - first] = x[first:]
        self._write = (self._write + n) % self.window_frames

    def _snapshot(self) -> np.ndarray:
        return np.concatenate((self._ring[self._write :], self._ring[: self._write]))
