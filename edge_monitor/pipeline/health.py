"""Input health shared by every machine: the source, its flow of audio, and the disk.

Judged in this order: source fault (device lost), unreadable input (a replay file that does
not decode, reported in the stream; it lasts until audio flows again), no audio at all,
disk error, audio overflow (dropped chunks). Each machine adds its own (silence, clipping,
model error) in `edge_monitor.pipeline.machine`. A fault clears by itself when its cause
goes away; a disk fault is re-checked by writing a probe file every `faults.disk_check_s`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_monitor.audio_in.capture import AudioSource
from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.pipeline.settings import ProcessingSettings

log = logging.getLogger(__name__)

DISK_PROBE_NAME = ".write-check"


class InputHealth:
    """The faults every machine shares; owned by the processing thread."""

    def __init__(self, source: AudioSource, settings: ProcessingSettings) -> None:
        self.source = source
        self.settings = settings
        self.last_chunk_at = time.monotonic()
        self.disk_fault: str | None = None
        self.input_fault: str | None = None
        self._last_disk_probe = 0.0
        self._last_drop_total = 0
        self._last_drop_at: float | None = None

    def replace_source(self, source: AudioSource) -> None:
        self.source = source
        self.last_chunk_at = time.monotonic()
        self._last_drop_total = 0
        self.input_fault = None

    def chunk_arrived(self, fault: str | None = None) -> None:
        """Audio arrived (clears an unreadable-input fault), or the source reported `fault`
        in its place."""
        self.last_chunk_at = time.monotonic()
        if fault is not None and self.input_fault is None:
            log.error("%s", fault)
        self.input_fault = fault

    def fault(self) -> str | None:
        """The shared fault now, or None."""
        source_fault = self.source.fault or self.input_fault
        if source_fault:
            return source_fault
        quiet_s = time.monotonic() - self.last_chunk_at
        if quiet_s > self.settings.faults.no_audio_s and not self.source.finished:
            return f"no audio from the input for {quiet_s:.0f} s"
        if self.disk_fault:
            return self.disk_fault
        if self._last_drop_at is not None:
            return "audio overflow: the processing could not keep up and audio was dropped"
        return None

    def check(self) -> None:
        """Count new drops (an overflow fault lasts one window), re-probe a failing disk."""
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
        if self.disk_fault and now - self._last_disk_probe > self.settings.faults.disk_check_s:
            self._probe_disk()

    def set_disk_fault(self, message: str) -> None:
        log.error("disk error: %s", message)
        self.disk_fault = f"disk error: {message}"
        self._last_disk_probe = time.monotonic()

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
        self.disk_fault = None
