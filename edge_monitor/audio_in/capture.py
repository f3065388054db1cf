"""Live audio input: a PortAudio stream whose callback never blocks, and that heals itself.

Contract shared by every audio source (live here, file replay in `edge_monitor.audio_in.replay`):

- `Chunk`: `frames` float32 shape (n, channels) at `sample_rate_hz`; `start_frame` counts
  frames since the source started. A chunk with `fault` set carries no frames: the input
  could not be read at that point of the stream (a replay file that does not decode).
  Consecutive chunks are contiguous exactly when
  `next.start_frame == prev.start_frame + len(prev.frames)`; a jump means audio was lost
  (dropped chunk, device restart, new replay file) and a windower must start over.
- `SourceStats`: counters for the daemon's telemetry; nothing is dropped silently.
- `AudioSource`: `start()`, `stop()`, `get(timeout_s) -> Chunk | None`, `stats()`,
  `fault` (None when healthy, else a sentence for the `fault` state), `finished`
  (a replay source ran out of files; a live source never finishes).

`SoundDeviceSource` opens a sounddevice.InputStream. Its callback copies the block and does
`put_nowait` into a bounded queue; a full queue counts a dropped chunk instead of blocking
the audio thread. A small supervisor thread watches the stream: when it stops (device
unplugged, PulseAudio gone, stream error) or goes quiet for `stall_s`, it sets `fault`,
closes the stream and reopens it with exponential backoff, refreshing PortAudio's device
list between attempts so a re-plugged USB microphone is found again. A successful reopen
clears `fault` and counts a restart. That refresh restarts PortAudio, so a process runs one
live source (record several machines as channels of it, not as several sources).

The sample rate is negotiated at open: the requested rate if the device accepts it, else the
device's default rate (logged). `sample_rate_hz` and each `Chunk.sample_rate_hz` give the
rate actually delivered; the processing loop converts it to the model's rate as it arrives
(`edge_monitor.core.stream.ModelRateStream`).

sounddevice (and so PortAudio) is imported lazily: importing this module has no side effect
and works on a box without libportaudio2.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np

from edge_monitor.core.audio_io import MAX_AUDIO_RATE_HZ, MIN_AUDIO_RATE_HZ
from edge_monitor.core.errors import ConfigError, RuntimeUnavailableError

log = logging.getLogger(__name__)

# Latency hint for PortAudio: a monitor needs no low latency, and a large device buffer
# makes input overflows on a busy small box much rarer.
STREAM_LATENCY = "high"
PA_INVALID_SAMPLE_RATE = -9997  # PortAudio's paInvalidSampleRate


@dataclass(frozen=True)
class Chunk:
    """A block of captured (or replayed) audio and where it sits in the source's timeline."""

    frames: np.ndarray  # float32, shape (n, channels), owned by the chunk (a copy)
    start_frame: int  # frames since the source started; a jump marks lost audio
    captured_at: float  # time.time() at the block's end; a fast replay gives audio time
    sample_rate_hz: int
    file: Path | None = None  # replay only: the file this block came from
    file_offset_frame: int = 0  # replay only: offset of frames[0] in that file
    # Replay only: no frames, but the input at this point of the stream could not be read
    # (the file named here); the machines are in `fault` until audio flows again.
    fault: str | None = None

    @property
    def end_frame(self) -> int:
        """One past the last frame: the `start_frame` a contiguous next chunk must have."""
        return self.start_frame + int(self.frames.shape[0])


@dataclass(frozen=True)
class SourceStats:
    """Counters since the source was created; a snapshot, safe to publish."""

    frames: int = 0  # frames delivered into the queue
    chunks: int = 0  # chunks delivered into the queue
    overflows: int = 0  # PortAudio input-overflow flags (the device lost samples)
    dropped_chunks: int = 0  # chunks thrown away because the consumer's queue was full
    restarts: int = 0  # successful reopenings after a fault
    skipped_files: int = 0  # replay only: unreadable files (each counted once) that were skipped
    last_error: str | None = None


class ChunkQueue:
    """The bounded queue between a source's producer and the processing loop, with the
    counts every source reports: `offer` never blocks (a live callback; a full queue
    drops and counts the chunk), `put` waits for room (fast replay loses nothing)."""

    def __init__(self, queue_s: float, block_s: float) -> None:
        self._queue: queue.Queue[Chunk] = queue.Queue(maxsize=max(1, math.ceil(queue_s / block_s)))
        # Written by the producer only; read elsewhere (ints are safe under the GIL).
        self.frames = 0
        self.chunks = 0
        self.dropped = 0

    def offer(self, chunk: Chunk) -> bool:
        """Queue without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            self.dropped += 1
            return False
        self._count(chunk)
        return True

    def put(self, chunk: Chunk, stop: threading.Event, poll_s: float) -> bool:
        """Wait for room, checking `stop` every `poll_s`; False when stop was set."""
        while not stop.is_set():
            try:
                self._queue.put(chunk, timeout=poll_s)
            except queue.Full:
                continue
            self._count(chunk)
            return True
        return False

    def _count(self, chunk: Chunk) -> None:
        if chunk.fault is None:
            self.frames += chunk.frames.shape[0]
            self.chunks += 1

    def get(self, timeout_s: float) -> Chunk | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._queue.empty()


@runtime_checkable
class AudioSource(Protocol):
    """What the daemon needs from any audio input."""

    @property
    def sample_rate_hz(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def fault(self) -> str | None: ...

    @property
    def finished(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def get(self, timeout_s: float) -> Chunk | None: ...

    def stats(self) -> SourceStats: ...


@dataclass(frozen=True)
class InputDevice:
    """One PortAudio device that can record."""

    index: int
    name: str
    host_api: str
    max_input_channels: int
    default_sample_rate_hz: int
    is_default: bool


def sounddevice_module() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio library into an error that says the fix."""
    try:
        import sounddevice
    except OSError as exc:
        raise RuntimeUnavailableError(
            f"PortAudio is not available ({exc}); install it with `apt-get install libportaudio2`"
        ) from exc
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"sounddevice is not installed ({exc}); install it with `pip install sounddevice`"
        ) from exc
    return sounddevice


def refresh_devices() -> None:
    """Re-enumerate PortAudio devices (needed after a USB device is plugged in again).

    PortAudio lists devices once at initialisation; restarting it is the only way to see
    new ones. Call it only while no stream of this process is open.
    """
    sd = sounddevice_module()
    sd._terminate()
    sd._initialize()


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, in PortAudio's index order."""
    sd = sounddevice_module()
    apis = sd.query_hostapis()
    try:
        default_index = int(sd.default.device[0])
    except (TypeError, ValueError):
        default_index = -1
    if default_index < 0:
        try:
            default_index = int(sd.query_devices(kind="input")["index"])
        except sd.PortAudioError:
            default_index = -1
    found = []
    for info in sd.query_devices():
        if int(info["max_input_channels"]) < 1:
            continue
        found.append(
            InputDevice(
                index=int(info["index"]),
                name=str(info["name"]),
                host_api=str(apis[int(info["hostapi"])]["name"]),
                max_input_channels=int(info["max_input_channels"]),
                default_sample_rate_hz=round(float(info["default_samplerate"])),
                is_default=int(info["index"]) == default_index,
            )
        )
    return found


def _describe(devices: list[InputDevice]) -> str:
    if not devices:
        return "no input devices are visible"
    return "inputs: " + ", ".join(f"{d.index}: {d.name!r}" for d in devices)


def resolve_device(device: str | int | None) -> InputDevice:
    """Find an input device by index, by (case-insensitive) name substring, or the default.

    A name matching several devices picks the exact name if there is one, else is an error
    listing the candidates. Raises ConfigError naming `device` with the visible inputs.
    """
    devices = list_input_devices()
    if device is None or device == "":
        for d in devices:
            if d.is_default:
                return d
        if devices:
            return devices[0]
        raise ConfigError(
            "device: no default input device; plug in a microphone or name one "
            "(`edge-monitor devices` lists them)"
        )
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        index = int(device)
        for d in devices:
            if d.index == index:
                return d
        raise ConfigError(
            f"device: no input device with index {index}; {_describe(devices)} "
            "(run `edge-monitor devices`)"
        )
    wanted = device.strip().lower()
    matches = [d for d in devices if wanted in d.name.lower()]
    exact = [d for d in matches if d.name.lower() == wanted]
    if len(matches) == 1 or exact:
        return (exact or matches)[0]
    if not matches:
        raise ConfigError(
            f"device: no input device name contains {device!r}; {_describe(devices)} "
            "(run `edge-monitor devices`)"
        )
    raise ConfigError(
        f"device: {device!r} matches several inputs ({_describe(matches)}); "
        "give a longer part of the name or the index"
    )


def negotiate_sample_rate(device: InputDevice, channels: int, sample_rate_hz: int) -> int:
    """The requested rate if the device takes it, else its default rate (logged).

    Only PortAudio's "invalid sample rate" triggers the fallback; any other refusal (a busy
    or vanished device) is raised as PortAudioError for the caller to retry.
    """
    sd = sounddevice_module()
    if channels > device.max_input_channels:
        raise ConfigError(
            f"channels: {device.name!r} has {device.max_input_channels} input channel(s), "
            f"{channels} requested; lower `channels` or pick another device"
        )
    try:
        sd.check_input_settings(
            device=device.index, channels=channels, samplerate=sample_rate_hz, dtype="float32"
        )
        return sample_rate_hz
    except sd.PortAudioError as exc:
        if len(exc.args) < 2 or exc.args[1] != PA_INVALID_SAMPLE_RATE:
            raise
    fallback = device.default_sample_rate_hz
    if not MIN_AUDIO_RATE_HZ <= fallback <= MAX_AUDIO_RATE_HZ:
        raise ConfigError(
            f"sample_rate_hz: {device.name!r} does not take {sample_rate_hz} Hz and its default "
            f"{fallback} Hz is outside the {MIN_AUDIO_RATE_HZ}..{MAX_AUDIO_RATE_HZ} Hz the "
            "models need; set `sample_rate_hz` to a rate the device supports in that range"
        )
    try:
        sd.check_input_settings(
            device=device.index, channels=channels, samplerate=fallback, dtype="float32"
        )
    except sd.PortAudioError as exc:
        if len(exc.args) < 2 or exc.args[1] != PA_INVALID_SAMPLE_RATE:
            raise
        raise ConfigError(
            f"sample_rate_hz: {device.name!r} accepts neither {sample_rate_hz} Hz nor its "
            f"default {fallback} Hz; set `sample_rate_hz` to a rate the device supports"
        ) from exc
    log.warning(
        "input %r does not take %d Hz; recording at its default %d Hz and resampling",
        device.name, sample_rate_hz, fallback,
    )
    return fallback


def check_source_rate(sample_rate_hz: object) -> None:
    """A source's rate within the runtime's audio bounds (edge_monitor.core.audio_io)."""
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int) or not (
        MIN_AUDIO_RATE_HZ <= sample_rate_hz <= MAX_AUDIO_RATE_HZ
    ):
        raise ConfigError(f"sample_rate_hz: must be a whole number of Hz in {MIN_AUDIO_RATE_HZ}.."
                          f"{MAX_AUDIO_RATE_HZ}, got {sample_rate_hz!r}")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}: must be a positive number, got {value!r}")


class SoundDeviceSource:
    """A live input that never blocks the audio thread and reopens itself after faults.

    `block_s` is the callback block length, `queue_s` how much audio the queue holds when
    the consumer lags (beyond it, chunks are dropped and counted). `stall_s`: no callback
    for this long while the stream claims to run counts as a lost device.
    """

    def __init__(
        self,
        device: str | int | None,
        channels: int,
        sample_rate_hz: int,
        block_s: float = 0.1,
        queue_s: float = 5.0,
        *,
        stall_s: float = 5.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels: must be a whole number >= 1, got {channels!r}")
        if not isinstance(sample_rate_hz, int) or sample_rate_hz < 1:
            raise ConfigError(f"sample_rate_hz: must be a whole number > 0, got {sample_rate_hz!r}")
        for name, value in (
            ("block_s", block_s), ("queue_s", queue_s), ("stall_s", stall_s),
            ("retry_min_s", retry_min_s), ("retry_max_s", retry_max_s),
        ):
            check_positive(name, value)
        if queue_s < block_s:
            raise ConfigError(f"queue_s: must be at least block_s ({block_s}), got {queue_s}")
        self._device_spec = device
        self._channels = channels
        self._requested_rate_hz = sample_rate_hz
        self._rate_hz = sample_rate_hz
        self._block_s = float(block_s)
        self._stall_s = float(stall_s)
        self._retry_min_s = float(retry_min_s)
        self._retry_max_s = float(retry_max_s)
        self._queue = ChunkQueue(queue_s, block_s)
        self._stop = threading.Event()
        self._stream_ended = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()
        self._stream = None
        self._supervisor: threading.Thread | None = None
        self._device_name = ""
        self._fault: str | None = None
        # Written by the audio callback only; read elsewhere (ints are safe under the GIL).
        self._next_frame = 0
        self._overflows = 0
        self._last_callback = 0.0
        # Written by the supervisor only.
        self._restarts = 0
        self._last_error: str | None = None
        self._lost_at: float | None = None

    # -- AudioSource ---------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> int:
        """The rate actually delivered (the requested one until the stream has opened)."""
        return self._rate_hz

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def device_name(self) -> str:
        """Name of the opened device ('' before the first successful open)."""
        return self._device_name

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def finished(self) -> bool:
        return False

    def start(self) -> None:
        """Open the stream now if possible; otherwise stay in `fault` and keep retrying.

        A device that is absent at boot is a fault that heals when it appears, not a crash.
        """
        if self._supervisor is not None:
            return
        self._stop.clear()
        if not self._try_open(refresh=False):
            self._lost_at = time.monotonic()
        self._supervisor = threading.Thread(
            target=self._supervise, name="capture-supervisor", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the supervisor and close the stream; safe to call twice."""
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)
            self._supervisor = None
        self._close_stream()

    def get(self, timeout_s: float) -> Chunk | None:
        return self._queue.get(timeout_s)

    def stats(self) -> SourceStats:
        return SourceStats(
            frames=self._queue.frames,
            chunks=self._queue.chunks,
            overflows=self._overflows,
            dropped_chunks=self._queue.dropped,
            restarts=self._restarts,
            last_error=self._last_error,
        )

    # -- audio thread --------------------------------------------------------------------
    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """Runs on PortAudio's thread: copy, enqueue without waiting, count; never blocks."""
        if status.input_overflow:  # type: ignore[attr-defined]
            self._overflows += 1
        chunk = Chunk(
            frames=indata.copy(),
            start_frame=self._next_frame,
            captured_at=time.time(),
            sample_rate_hz=self._rate_hz,
        )
        self._next_frame += frames
        self._last_callback = time.monotonic()
        self._queue.offer(chunk)

    def _on_stream_finished(self, generation: int) -> None:
        if generation == self._generation:
            self._stream_ended.set()

    # -- supervisor ----------------------------------------------------------------------
    def _try_open(self, refresh: bool) -> bool:
        """Open and start a stream; on failure record why in `fault` and return False."""
        sd = sounddevice_module()
        try:
            if refresh:
                refresh_devices()
            device = resolve_device(self._device_spec)
            rate = negotiate_sample_rate(device, self._channels, self._requested_rate_hz)
            self._generation += 1
            self._stream_ended.clear()
            stream = sd.InputStream(
                device=device.index,
                channels=self._channels,
                samplerate=rate,
                dtype="float32",
                blocksize=max(1, round(self._block_s * rate)),
                latency=STREAM_LATENCY,
                callback=self._callback,
                finished_callback=functools.partial(self._on_stream_finished, self._generation),
            )
        except (sd.PortAudioError, ConfigError, ValueError, OSError) as exc:
            self._set_fault(f"input device {self._describe_spec()} unavailable: {exc}")
            return False
        if self._lost_at is not None:
            # Keep the frame counter honest across the outage so the gap is visible.
            self._next_frame += max(1, round((time.monotonic() - self._lost_at) * rate))
        self._rate_hz = rate
        self._device_name = device.name
        self._last_callback = time.monotonic()
        try:
            stream.start()
        except sd.PortAudioError as exc:
            stream.close(ignore_errors=True)
            self._set_fault(f"input device unavailable: cannot start {device.name!r}: {exc}")
            return False
        with self._lock:
            self._stream = stream
        log.info(
            "recording from %r (index %d, %s) at %d Hz, %d channel(s)",
            device.name, device.index, device.host_api, rate, self._channels,
        )
        return True

    def _describe_spec(self) -> str:
        return "(default)" if self._device_spec in (None, "") else repr(self._device_spec)

    def _set_fault(self, message: str) -> None:
        if message != self._fault:
            log.error("%s", message)
        self._fault = message
        self._last_error = message

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)

    def _stream_problem(self) -> str | None:
        stream = self._stream
        if stream is None:
            return None
        if self._stream_ended.is_set() or not stream.active:
            return f"input device lost: the stream from {self._device_name!r} stopped"
        quiet_s = time.monotonic() - self._last_callback
        if quiet_s > self._stall_s:
            return f"input device lost: no audio from {self._device_name!r} for {quiet_s:.1f} s"
        return None

    def _supervise(self) -> None:
        """Run the watch loop; an unexpected error is a fault and a retry, never a dead thread."""
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # the capture must not stop healing itself
                log.exception("capture supervisor error")
                self._set_fault(f"input device error: {exc}; reopening it")
                self._close_stream()
                self._lost_at = self._lost_at or time.monotonic()
                self._stop.wait(self._retry_max_s)

    def _watch(self) -> None:
        delay_s = self._retry_min_s
        next_try = time.monotonic() + delay_s
        check_s = min(0.2, self._block_s)
        while not self._stop.wait(check_s):
            if self._stream is not None:
                problem = self._stream_problem()
                if problem is None:
                    continue
                self._set_fault(f"{problem}; reopening it")
                self._close_stream()
                self._lost_at = time.monotonic()
                delay_s = self._retry_min_s
                next_try = time.monotonic() + delay_s
                continue
            if time.monotonic() < next_try:
                continue
            if self._try_open(refresh=True):
                self._restarts += 1
                self._lost_at = None
                self._fault = None
                delay_s = self._retry_min_s
                log.info("input recovered (restart %d)", self._restarts)
            else:
                delay_s = min(self._retry_max_s, delay_s * 2.0)
                next_try = time.monotonic() + delay_s
