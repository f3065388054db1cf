"""The embedding cache: keyed by embedder and preprocessing, invalidated by a changed file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_monitor.core.audio_io import read_audio
from edge_monitor.core.embedders.logmel_stats import LogMelStatsEmbedder
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from trainer.embed_cache import CROP_CENTER, EmbeddingCache, EmbedOptions, cache_key

RATE_HZ = 16000


def _wav(path: Path, freq_hz: float, seconds: float = 0.5) -> Path:
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32), RATE_HZ)
    return path


def test_vectors_equal_the_daemon_path_and_are_reused(tmp_path: Path) -> None:
    clips = [_wav(tmp_path / "a.wav", 300.0), _wav(tmp_path / "b.wav", 900.0)]
    embedder = LogMelStatsEmbedder()
    cache = EmbeddingCache(tmp_path / "cache", embedder, EmbedOptions())
    vectors = cache.embed_paths(clips, progress=False)
    expected = embedder.embed(preprocess(read_audio(clips[0], RATE_HZ), RATE_HZ).audio)
    np.testing.assert_allclose(vectors[0], expected, atol=1e-6)
    entries = sorted(cache.directory.glob("*.npz"))
    assert len(entries) == 2 and (cache.directory / "identity.json").is_file()
    stamps = [p.stat().st_mtime_ns for p in entries]
    np.testing.assert_array_equal(cache.embed_paths(clips, progress=False), vectors)
    assert [p.stat().st_mtime_ns for p in entries] == stamps  # nothing recomputed


def test_changed_file_is_embedded_again(tmp_path: Path) -> None:
    clip = _wav(tmp_path / "a.wav", 300.0)
    cache = EmbeddingCache(tmp_path / "cache", LogMelStatsEmbedder(), EmbedOptions())
    before = cache.embed_paths([clip], progress=False)
    _wav(clip, 2500.0)
    os.utime(clip, ns=(1, 1))  # a different mtime even on coarse file systems
    after = cache.embed_paths([clip], progress=False)
    assert not np.allclose(before, after)


def test_a_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    clip = _wav(tmp_path / "a.wav", 300.0)
    cache = EmbeddingCache(tmp_path / "cache", LogMelStatsEmbedder(), EmbedOptions())
    good = cache.embed_paths([clip], progress=False)
    (entry,) = cache.directory.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    np.testing.assert_allclose(cache.embed_paths([clip], progress=False), good)


def test_key_covers_embedder_preprocessing_and_crop() -> None:
    embedder = LogMelStatsEmbedder()
    base = cache_key(embedder, EmbedOptions())
    assert base == cache_key(LogMelStatsEmbedder(), EmbedOptions())
    no_loudness = EmbedOptions(preprocess=PreprocessConfig(normalise_loudness=False))
    others = {
        cache_key(embedder, no_loudness),
        cache_key(embedder, EmbedOptions(crop=CROP_CENTER)),
        cache_key(LogMelStatsEmbedder(n_mels=64), EmbedOptions()),
    }
    assert base not in others and len(others) == 3
