"""A file or directory replay source: recorded audio through the same path as a microphone.

`ReplaySource` implements `edge_monitor.audio_in.capture.AudioSource`. It reads WAV/FLAC files
(directories are searched recursively; each list is sorted by path) a block at a time with
soundfile, resampled to `sample_rate_hz` by the project's one resampler
(`edge_monitor.core.audio_io.StreamResampler`, streamed), so memory stays flat
however long the files, and emits `block_s` chunks:

- `realtime=True`: paced like a live input (a block is emitted once its duration has
  elapsed); a full queue drops the chunk and counts it, as a live source would.
- `realtime=False`: as fast as the consumer takes chunks; the bounded queue blocks the
  reader instead of dropping, so nothing is lost (tests, back-testing, soak runs). A
  chunk's `captured_at` is then audio time: the replay's start plus the audio before the
  chunk's end, so alarm times and durations follow the recordings, file after file, not
  the wall clock.

Each chunk says which file and frame offset it came from (`Chunk.file`,
`Chunk.file_offset_frame`) so a back-test can report per file. Files are separate
recordings by default: the frame counter skips one frame between files so a windower never
splices two files into one window; `contiguous=True` treats them as one long recording.

An unreadable file (empty, garbage, truncated, NaN or infinite samples, a sample rate
outside `edge_monitor.core.audio_io`'s bounds) is logged with its name, counted once in
`stats().skipped_files`, listed in `unreadable`, and skipped (one that fails part-way is
played up to there); it never stops the replay. In its place the stream carries a chunk
with `fault` set and no frames, so the processing puts the machines into `fault` at that
point, as it would for a dead microphone, until audio flows again; a back-test with an
unreadable file exits non-zero (edge_monitor.daemon). `finished` becomes True once the
last file has been emitted and the consumer has taken every chunk; with `loop=True` the
files repeat until `stop()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_monitor.audio_in.capture import (
    Chunk,
    ChunkQueue,
    SourceStats,
    check_positive,
    check_source_rate,
)
from edge_monitor.core.audio_io import SUPPORTED_SUFFIXES, StreamResampler, check_audio_rate
from edge_monitor.core.errors import AudioFileError, ConfigError, one_line

log = logging.getLogger(__name__)

PUT_POLL_S = 0.1  # how often a blocked fast-mode reader checks for stop()
READ_FRAMES = 65536  # frames decoded at a time: a few seconds, whatever the file's length


def find_audio_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and directories into a list of audio files, each directory sorted.

    A missing path, or no audio file at all, raises AudioFileError naming it.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("paths: give at least one audio file or directory to replay")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
            if not inside:
                raise AudioFileError(
                    f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files in this directory"
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise AudioFileError(f"{path}: no such file or directory to replay; check the path")
    return found


def _decode_error(path: Path, exc: Exception) -> AudioFileError:
    return AudioFileError(
        f"{path}: cannot decode audio ({one_line(exc)}); the file must be a complete WAV or FLAC"
    )


def stream_frames(path: Path, sample_rate_hz: int, channels: int) -> Iterator[np.ndarray]:
    """Decode a file a block at a time to float32 (frames, channels) at `sample_rate_hz`.

    Memory stays at a few blocks however long the file (a day-long recording replays in
    a flat RSS); the resampler is streamed across blocks. One channel: the file's channels
    are averaged. More: the file must have exactly that many channels, or one (copied to
    each). A problem found part-way (truncated, NaN) raises AudioFileError there.
    """
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _decode_error(path, exc) from exc
    with handle:
        check_audio_rate(handle.samplerate, str(path))
        if handle.frames == 0:
            raise AudioFileError(f"{path}: the file holds no audio frames; record it again")
        if channels > 1 and handle.channels not in (1, channels):
            raise AudioFileError(
                f"{path}: has {handle.channels} channels, the replay source expects "
                f"{channels}; set `channels` to match the recordings"
            )
        resampler = StreamResampler(handle.samplerate, sample_rate_hz, channels)
        decoded = 0
        while True:
            try:
                block = handle.read(READ_FRAMES, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                raise _decode_error(path, exc) from exc
            decoded += block.shape[0]
            last = block.shape[0] < READ_FRAMES
            if last and decoded < handle.frames:
                raise AudioFileError(
                    f"{path}: truncated: header promises {handle.frames} frames, only "
                    f"{decoded} could be decoded; copy the file again"
                )
            if not np.all(np.isfinite(block)):
                raise AudioFileError(f"{path}: the file holds NaN or infinite samples")
            if channels == 1:
                block = block.mean(axis=1, keepdims=True, dtype=np.float32)
            elif block.shape[1] == 1:
                block = np.repeat(block, channels, axis=1)
            block = resampler.push(block, last=last)
            if block.shape[0]:
                yield block
            if last:
                return


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Cut a stream of (frames, channels) blocks into blocks of exactly `size` frames; the
    last one holds what is left."""
    pending: np.ndarray | None = None
    for block in blocks:
        pending = block if pending is None else np.concatenate([pending, block])
        while pending.shape[0] >= size:
            yield pending[:size].copy()
            pending = pending[size:]
    if pending is not None and pending.shape[0]:
        yield pending.copy()


class ReplaySource:
    """Replays audio files as a stream of chunks (see the module docstring)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        sample_rate_hz: int,
        channels: int = 1,
        realtime: bool = True,
        block_s: float = 0.1,
        loop: bool = False,
        *,
        queue_s: float = 5.0,
        contiguous: bool = False,
    ) -> None:
        check_source_rate(sample_rate_hz)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels: must be a whole number >= 1, got {channels!r}")
        check_positive("block_s", block_s)
        check_positive("queue_s", queue_s)
        self.files = find_audio_files(paths)
        self._rate_hz = sample_rate_hz
        self._channels = channels
        self._realtime = realtime
        self._loop = loop
        self._contiguous = contiguous
        self._block_frames = max(1, round(block_s * sample_rate_hz))
        self._queue = ChunkQueue(queue_s, block_s)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._fault: str | None = None
        self.unreadable: dict[Path, str] = {}  # file -> why it could not be read
        self._last_error: str | None = None

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def finished(self) -> bool:
        """True once every file was emitted and every chunk taken (or after stop())."""
        return self._done.is_set() and self._queue.empty()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._done.set()

    def get(self, timeout_s: float) -> Chunk | None:
        return self._queue.get(timeout_s)

    def stats(self) -> SourceStats:
        return SourceStats(
            frames=self._queue.frames,
            chunks=self._queue.chunks,
            dropped_chunks=self._queue.dropped,
            skipped_files=len(self.unreadable),
            last_error=self._last_error,
        )

    def _run(self) -> None:
        try:
            self._replay()
        except Exception as exc:  # the consumer must hear of it, not see a quiet end
            log.exception("replay failed")
            self._fault = f"replay failed: {exc}"
            self._last_error = self._fault
        finally:
            self._done.set()

    def _replay(self) -> None:
        started = time.monotonic()
        started_wall = time.time()
        paced_frames = 0  # frames whose real-time duration has been waited for
        next_frame = 0
        while True:
            played_any = False
            for path in self.files:
                if self._stop.is_set():
                    return
                if next_frame > 0 and not self._contiguous:
                    next_frame += 1  # a one-frame jump: the next file is a new recording
                log.debug("replaying %s", path)
                offset = 0
                try:
                    blocks = stream_frames(path, self._rate_hz, self._channels)
                    for frames in rechunk(blocks, self._block_frames):
                        played_any = True
                        if self._realtime:
                            paced_frames += frames.shape[0]
                            due = started + paced_frames / self._rate_hz
                            if self._stop.wait(max(0.0, due - time.monotonic())):
                                return
                        end = next_frame + frames.shape[0]
                        chunk = Chunk(
                            frames=frames,
                            start_frame=next_frame,
                            captured_at=(time.time() if self._realtime
                                         else started_wall + end / self._rate_hz),
                            sample_rate_hz=self._rate_hz,
                            file=path,
                            file_offset_frame=offset,
                        )
                        next_frame += frames.shape[0]
                        offset += frames.shape[0]
                        if not self._deliver(chunk):
                            return
                except AudioFileError as exc:
                    next_frame += 1 if offset else 0  # the rest is missing: a gap
                    at = (time.time() if self._realtime
                          else started_wall + next_frame / self._rate_hz)
                    if not self._unreadable(path, exc, next_frame, at):
                        return
            if not self._loop:
                return
            if not played_any:
                self._fault = (
                    f"replay: none of the {len(self.files)} file(s) could be read; "
                    f"last error: {self._last_error}"
                )
                log.error("%s", self._fault)
                return

    def _unreadable(self, path: Path, exc: AudioFileError, next_frame: int, at: float) -> bool:
        """Count and log an unreadable file and put its fault into the stream (never dropped,
        even in real time); False when stop() was asked for while waiting."""
        self.unreadable[path] = str(exc)
        self._last_error = str(exc)
        log.warning("skipping the rest of an unreadable replay file: %s", exc)
        marker = Chunk(
            frames=np.zeros((0, self._channels), np.float32), start_frame=next_frame,
            captured_at=at, sample_rate_hz=self._rate_hz, file=path,
            fault=f"unreadable input: {exc}"[:300],
        )
        return self._queue.put(marker, self._stop, PUT_POLL_S)

    def _deliver(self, chunk: Chunk) -> bool:
        """Queue a chunk; False when stop() was asked for while waiting."""
        if self._realtime:
            self._queue.offer(chunk)  # a full queue drops and counts, as a live input would
            return True
        return self._queue.put(chunk, self._stop, PUT_POLL_S)
