"""Embed audio clips exactly as the daemon would, caching each clip's vector on disk.

A clip is read at the embedder's rate (`read_audio`), optionally cropped, conditioned by
`edge_monitor.core.preprocess.preprocess` with the same PreprocessConfig the daemon uses, and
embedded. The daemon embeds rolling 10 s windows; DCASE clips are 10-12 s, so the crop policy
decides what evaluation sees:

- ``full``: the whole clip, preprocessed and embedded as one input (the DCASE convention);
- ``center-10s``: the centred 10 s, which is exactly one daemon window.

Cache layout: ``<cache>/<key>/<clip hash>.npz``, where key hashes the embedder's identity, the
preprocessing config and the crop policy, and the clip hash covers path, mtime and size, so a
changed file or setting is re-embedded and nothing stale is ever reused. Writes are atomic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_monitor.core.atomic import atomic_path, atomic_write_text
from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.embedders.base import Embedder
from edge_monitor.core.errors import ConfigError
from edge_monitor.core.preprocess import PreprocessConfig, preprocess, trim_quiet_ends

log = logging.getLogger(__name__)

CROP_FULL, CROP_CENTER = "full", "center-10s"
CROP_POLICIES = (CROP_FULL, CROP_CENTER)
CENTER_CROP_S = 10.0  # the daemon's window length
CACHE_FORMAT = 1
DEFAULT_TRIM_QUIET_DB = 20.0


@dataclass(frozen=True)
class EmbedOptions:
    """How a clip becomes the audio an embedder sees."""

    crop: str = CROP_FULL
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    trim_quiet_db: float = DEFAULT_TRIM_QUIET_DB
    """Trim a lead-in and tail this far under the clip's median level (0 = keep the clip)."""

    def __post_init__(self) -> None:
        if self.crop not in CROP_POLICIES:
            raise ConfigError(f"crop policy {self.crop!r} is unknown; choose from {CROP_POLICIES}")
        if not self.trim_quiet_db >= 0:
            raise ConfigError(f"trim_quiet_db {self.trim_quiet_db!r}: must be >= 0 (0 = off)")


def embedder_identity(embedder: Embedder) -> dict[str, Any]:
    """Everything that changes an embedder's output, for the cache key.

    The protocol's fields, a dataclass embedder's scalar fields, and an optional `identity`
    string attribute (a checkpoint-backed embedder should set it, e.g. to its sha256).
    """
    identity: dict[str, Any] = {
        "name": embedder.name,
        "sample_rate_hz": int(embedder.sample_rate_hz),
        "window_s": float(embedder.window_s),
        "dim": int(embedder.dim),
    }
    if dataclasses.is_dataclass(embedder):
        for f in dataclasses.fields(embedder):
            value = getattr(embedder, f.name)
            if isinstance(value, str | int | float | bool):
                identity[f.name] = value
    extra = getattr(embedder, "identity", None)
    if isinstance(extra, str):
        identity["identity"] = extra
    return identity


def cache_key(embedder: Embedder, options: EmbedOptions) -> str:
    """A short hash naming the cache directory of one embedder and preprocessing setting."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "embedder": embedder_identity(embedder),
            "preprocess": dataclasses.asdict(options.preprocess),
            "crop": options.crop,
            "trim_quiet_db": options.trim_quiet_db,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crop_audio(audio: np.ndarray, sample_rate_hz: int, policy: str) -> np.ndarray:
    """Apply a crop policy; a clip shorter than the crop is returned whole."""
    if policy == CROP_FULL:
        return audio
    length = round(CENTER_CROP_S * sample_rate_hz)
    if audio.shape[0] <= length:
        return audio
    start = (audio.shape[0] - length) // 2
    return audio[start : start + length]


def embed_file(path: Path, embedder: Embedder, options: EmbedOptions) -> np.ndarray:
    """Read, crop, preprocess and embed one clip; returns a (dim,) float32 vector."""
    rate = int(embedder.sample_rate_hz)
    audio = read_audio(path, rate)
    if options.trim_quiet_db > 0:
        audio = trim_quiet_ends(audio, rate, options.trim_quiet_db)
    audio = crop_audio(audio, rate, options.crop)
    conditioned = preprocess(audio, rate, options.preprocess)
    vector = np.asarray(embedder.embed(conditioned.audio), dtype=np.float32)
    if vector.shape != (embedder.dim,) or not np.all(np.isfinite(vector)):
        raise ValueError(
            f"{path}: embedder {embedder.name!r} returned shape {vector.shape} (expected "
            f"({embedder.dim},)) or non-finite values"
        )
    return vector


class EmbeddingCache:
    """Embeddings of clips for one embedder and one EmbedOptions, memoised on disk."""

    def __init__(self, directory: str | Path, embedder: Embedder, options: EmbedOptions) -> None:
        self.embedder = embedder
        self.options = options
        self.directory = Path(directory) / cache_key(embedder, options)

    def _entry_path(self, clip_path: Path) -> Path:
        stat = clip_path.stat()
        stamp = f"{clip_path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
        return self.directory / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.npz"

    def _load(self, entry: Path) -> np.ndarray | None:
        try:
            with np.load(entry, allow_pickle=False) as data:
                vector = data["embedding"].astype(np.float32)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("cache entry %s unreadable (%s); embedding the clip again", entry, exc)
            return None
        if vector.shape != (self.embedder.dim,) or not np.all(np.isfinite(vector)):
            log.warning("cache entry %s has a wrong shape or values; embedding again", entry)
            return None
        return vector

    def _store(self, entry: Path, clip_path: Path, vector: np.ndarray) -> None:
        with atomic_path(entry) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, embedding=vector, path=np.asarray(str(clip_path)))

    def _write_identity(self) -> None:
        path = self.directory / "identity.json"
        if not path.exists():
            blob = {
                "embedder": embedder_identity(self.embedder),
                "preprocess": dataclasses.asdict(self.options.preprocess),
                "crop": self.options.crop,
            }
            atomic_write_text(path, json.dumps(blob, indent=2, sort_keys=True) + "\n")

    def embed_paths(self, paths: Sequence[Path], progress: bool = True) -> np.ndarray:
        """Embeddings of `paths` in order, shape (N, dim); only uncached clips are computed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_identity()
        out = np.zeros((len(paths), self.embedder.dim), np.float32)
        missing: list[tuple[int, Path, Path]] = []
        for i, clip_path in enumerate(paths):
            entry = self._entry_path(Path(clip_path))
            vector = self._load(entry) if entry.exists() else None
            if vector is None:
                missing.append((i, Path(clip_path), entry))
            else:
                out[i] = vector
        log.info(
            "%d of %d clips cached in %s; embedding %d with %s",
            len(paths) - len(missing), len(paths), self.directory, len(missing),
            self.embedder.name,
        )
        bar = tqdm(
            missing, desc=f"embedding ({self.embedder.name})", unit="clip",
            disable=not progress or not missing,
        )
        for i, clip_path, entry in bar:
            out[i] = embed_file(clip_path, self.embedder, self.options)
            self._store(entry, clip_path, out[i])
        return out
