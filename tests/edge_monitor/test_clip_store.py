"""ClipStore: exact FLAC clips, safe names, retention by count/size/age, clear write errors."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from disk_support import mounted_tmpfs

from edge_monitor.core.errors import ConfigError, EdgeMonitorError
from edge_monitor.pipeline.clip_store import ClipStore, ClipStoreError

RATE_HZ = 16000
T0 = 1_790_000_000.0  # a fixed event time (2026-09-21 14:13:20 UTC)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE_HZ))).astype(
        np.float32
    )


def _age(path: Path, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def test_saved_clip_is_a_16_bit_flac_with_a_safe_name(tmp_path: Path) -> None:
    audio = _noise(0.5)
    store = ClipStore(tmp_path / "clips", max_clips=10, max_bytes=None, max_age_s=None)
    path = store.save("../pump 1/", audio, RATE_HZ, "evt:42/..", T0)
    assert path.parent == tmp_path / "clips"
    assert path.name == "20260921T141320.000Z_pump_1_evt_42.flac"
    info = sf.info(path)
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", RATE_HZ)
    decoded, _ = sf.read(path, dtype="float32")
    assert np.max(np.abs(decoded - audio)) <= 1.0 / 32768
    assert [p.name for p in (tmp_path / "clips").iterdir()] == [path.name]  # no temp left


def test_retention_by_count_deletes_oldest_first(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, max_clips=3, max_bytes=None, max_age_s=None)
    paths = []
    for i in range(5):
        paths.append(store.save("fan", _noise(0.1, i), RATE_HZ, f"e{i}", T0 + i))
        _age(paths[-1], 100 - i)  # written in order: older files have older times
    assert [c.path for c in store.clips()] == paths[2:]


def test_retention_by_size_never_deletes_the_new_clip(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, max_clips=None, max_bytes=60_000, max_age_s=None)
    small = store.save("fan", _noise(0.5, 1), RATE_HZ, "small", T0)
    _age(small, 10)
    size = small.stat().st_size
    assert 10_000 < size < 30_000
    second = store.save("fan", _noise(0.5, 2), RATE_HZ, "second", T0 + 1)
    assert small.exists() and second.exists()
    _age(second, 5)
    # A clip larger than the whole budget is still kept; everything older goes.
    big = store.save("fan", _noise(5.0, 3), RATE_HZ, "big", T0 + 2)
    assert big.stat().st_size > 60_000
    assert [c.path for c in store.clips()] == [big]


def test_retention_by_age(tmp_path: Path) -> None:
    store = ClipStore(tmp_path, max_clips=None, max_bytes=None, max_age_s=3600)
    old = store.save("fan", _noise(0.1), RATE_HZ, "old", T0)
    _age(old, 7200)
    fresh = store.save("fan", _noise(0.1), RATE_HZ, "fresh", T0 + 1)
    assert not old.exists() and fresh.exists()
    (tmp_path / "notes.txt").write_text("not a clip")
    _age(tmp_path / "notes.txt", 7200)
    assert store.prune() == [] and (tmp_path / "notes.txt").exists()


def test_unwritable_directory_raises_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    store = ClipStore(blocker / "clips")
    with pytest.raises(ClipStoreError, match=r"cannot save alarm clip .*a-file/clips/") as err:
        store.save("fan", _noise(0.1), RATE_HZ, "e1", T0)
    assert isinstance(err.value, EdgeMonitorError) and "writable directory" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk (needs root with mount rights, else skipped)."""
    with mounted_tmpfs(tmp_path / "tiny", "size=64k") as mount_point:
        yield mount_point


def test_full_disk_raises_and_leaves_no_partial_file(tiny_disk: Path) -> None:
    store = ClipStore(tiny_disk)
    kept = store.save("fan", _noise(0.2), RATE_HZ, "fits", T0)
    with pytest.raises(ClipStoreError, match="No space left on device"):
        store.save("fan", _noise(10.0), RATE_HZ, "too-big", T0 + 1)
    assert [p.name for p in tiny_disk.iterdir()] == [kept.name]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"max_clips": 0}, "max_clips"), ({"max_bytes": -1}, "max_bytes"),
     ({"max_age_s": float("inf")}, "max_age_s"), ({"max_clips": 2.5}, "max_clips")],
)
def test_bad_limits_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        ClipStore(tmp_path, **kwargs)
