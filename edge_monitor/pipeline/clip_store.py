"""Alarm recordings on disk: one FLAC per event, written atomically, with bounded retention.

`ClipStore(directory, max_clips, max_bytes, max_age_s).save(...)` writes
`<UTC start time>_<machine>_<event id>.flac` (16-bit PCM FLAC, names reduced to safe
characters) through `edge_monitor.core.atomic.atomic_write_bytes`, so a crash or a full disk leaves
either the whole clip or nothing. After each save, clips older than `max_age_s` are deleted,
then the oldest ones until at most `max_clips` clips and `max_bytes` bytes remain; the clip
just written is never deleted, even when it alone exceeds `max_bytes`. A limit of None is
no limit. Only this store's `*.flac` files are counted and deleted; leftover temp files of
an interrupted write are removed too.

A failed write (disk full, read-only or missing directory, permissions) raises
ClipStoreError naming the file and the cause; the daemon reports it as a fault and goes on.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_monitor.core.atomic import atomic_write_bytes
from edge_monitor.core.errors import ConfigError, EdgeMonitorError

log = logging.getLogger(__name__)

CLIP_SUFFIX = ".flac"
NAME_PART_MAX = 64
# A temp file of atomic_path older than this is left over from a crash, not a write in flight.
STALE_TEMP_S = 3600.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ClipStoreError(EdgeMonitorError):
    """An alarm clip could not be written (disk full, permissions, missing directory)."""


@dataclass(frozen=True)
class StoredClip:
    path: Path
    size_bytes: int
    modified_at: float


def safe_name_part(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only; never empty, never hidden, bounded length."""
    cleaned = _UNSAFE.sub("_", str(text)).strip("._")[:NAME_PART_MAX]
    return cleaned or "unnamed"


def clip_file_name(machine: str, event_id: str, started_at: float) -> str:
    stamp = datetime.fromtimestamp(started_at, tz=timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    return f"{stamp[:-3]}Z_{safe_name_part(machine)}_{safe_name_part(event_id)}{CLIP_SUFFIX}"


def _limit(name: str, value: float | None, integer: bool) -> None:
    if value is None:
        return
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(
            f"{name}: must be {kind} greater than 0 (or null for no limit), got {value!r}"
        )


class ClipStore:
    """Saves alarm clips and keeps the directory within its limits."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_clips: int | None = 500,
        max_bytes: int | None = 500_000_000,
        max_age_s: float | None = 30 * 86400.0,
    ) -> None:
        _limit("max_clips", max_clips, integer=True)
        _limit("max_bytes", max_bytes, integer=True)
        _limit("max_age_s", max_age_s, integer=False)
        self.directory = Path(directory)
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s

    def save(
        self,
        machine: str,
        audio: np.ndarray,
        sample_rate_hz: int,
        event_id: str,
        started_at: float,
    ) -> Path:
        """Write one clip (mono (n,) or (n, channels) float in [-1, 1]) and apply retention."""
        data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        if data.ndim not in (1, 2) or data.shape[0] == 0:
            raise ValueError(f"clip audio must be (frames,) or (frames, channels): {data.shape}")
        # Encode in memory first: libsndfile reports a failed disk write only by a short count
        # (an `assert` in soundfile), while a plain file write raises OSError(ENOSPC).
        encoded = io.BytesIO()
        sf.write(encoded, data, int(sample_rate_hz), format="FLAC", subtype="PCM_16")
        path = self.directory / clip_file_name(machine, event_id, started_at)
        try:
            atomic_write_bytes(path, encoded.getvalue())
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ClipStoreError(
                f"cannot save alarm clip {path}: {reason}; free disk space or make "
                f"{self.directory} a writable directory"
            ) from exc
        log.info("saved alarm clip %s (%.1f s)", path, data.shape[0] / sample_rate_hz)
        self.prune(keep=path)
        return path

    def clips(self) -> list[StoredClip]:
        """This store's clips, oldest first (by modification time, then name)."""
        found = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(CLIP_SUFFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry.is_file(follow_symlinks=False):
                found.append(StoredClip(Path(entry.path), st.st_size, st.st_mtime))
        found.sort(key=lambda c: (c.modified_at, c.path.name))
        return found

    def prune(self, keep: Path | None = None, now: float | None = None) -> list[Path]:
        """Apply the age, count and size limits; return the deleted clips. Never deletes `keep`."""
        now = time.time() if now is None else now
        self._remove_stale_temps(now)
        clips = self.clips()
        doomed: list[StoredClip] = []
        if self.max_age_s is not None:
            doomed += [c for c in clips if now - c.modified_at > self.max_age_s and c.path != keep]
        kept = [c for c in clips if c not in doomed]
        total = sum(c.size_bytes for c in kept)
        for clip in list(kept):
            over_count = self.max_clips is not None and len(kept) > self.max_clips
            over_size = self.max_bytes is not None and total > self.max_bytes
            if not (over_count or over_size):
                break
            if clip.path == keep:
                continue
            doomed.append(clip)
            kept.remove(clip)
            total -= clip.size_bytes
        deleted = []
        for clip in doomed:
            try:
                clip.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot delete old alarm clip %s: %s", clip.path, exc)
                continue
            deleted.append(clip.path)
        if deleted:
            log.info("retention removed %d old alarm clip(s)", len(deleted))
        return deleted

    def _remove_stale_temps(self, now: float) -> None:
        for tmp in self.directory.glob(f".*{CLIP_SUFFIX}.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TEMP_S:
                    tmp.unlink()
            except OSError:
                continue
