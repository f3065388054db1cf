"""Windows depend on the samples only, never on how the stream was chunked."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.core.errors import ConfigError
from edge_monitor.core.windowing import Windower

RATE_HZ = 1000


def _stream(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE_HZ)).astype(np.float32)


def _push_in_chunks(windower: Windower, x: np.ndarray, sizes: np.ndarray) -> list:
    windows, pos, i = [], 0, 0
    while pos < x.shape[0]:
        n = int(sizes[i % len(sizes)])
        windows += windower.push(x[pos : pos + n], start_frame=pos)
        pos += n
        i += 1
    return windows


@pytest.mark.parametrize(("window_s", "hop_s"), [(1.0, 0.25), (0.5, 0.5), (1.0, 0.333)])
def test_random_chunk_sizes_give_bit_identical_windows(window_s: float, hop_s: float) -> None:
    x = _stream(7.3)
    reference = Windower(RATE_HZ, window_s, hop_s).push(x, start_frame=0)
    rng = np.random.default_rng(1)
    for sizes in (rng.integers(1, 50, 400), rng.integers(1, 3000, 50), np.array([1]),
                  np.array([x.shape[0]])):
        got = _push_in_chunks(Windower(RATE_HZ, window_s, hop_s), x, sizes)
        assert len(got) == len(reference)
        for a, b in zip(got, reference, strict=True):
            assert a.end_frame == b.end_frame and a.sequence == b.sequence
            assert np.array_equal(a.audio, b.audio)


def test_windows_hold_the_right_samples() -> None:
    x = _stream(3.0)
    windows = Windower(RATE_HZ, 1.0, 0.5).push(x)
    assert [w.end_frame for w in windows] == [1000, 1500, 2000, 2500, 3000]
    for w in windows:
        assert w.audio.dtype == np.float32 and w.audio.shape == (1000,)
        assert np.array_equal(w.audio, x[w.start_frame : w.end_frame])
    windows[0].audio[:] = 0.0  # a copy: changing it must not touch later windows
    assert np.array_equal(windows[1].audio, x[500:1500])


def test_gap_restarts_the_window_and_is_counted() -> None:
    x = _stream(4.0)
    w = Windower(RATE_HZ, 1.0, 0.5)
    assert [v.end_frame for v in w.push(x[:1200], start_frame=0)] == [1000]
    # 300 frames lost: the next window needs a full second of new audio after the hole.
    after = w.push(x[1500:3000], start_frame=1500)
    assert w.gaps == 1
    assert [v.end_frame for v in after] == [2500, 3000]
    assert np.array_equal(after[0].audio, x[1500:2500])
    assert [v.sequence for v in after] == [1, 2]
    assert w.buffered_frames == 1000


def test_start_frame_none_means_contiguous() -> None:
    x = _stream(2.0)
    w = Windower(RATE_HZ, 1.0, 1.0)
    got = w.push(x[:700]) + w.push(x[700:])
    assert [v.end_frame for v in got] == [1000, 2000] and w.gaps == 0


@pytest.mark.parametrize(
    ("window_s", "hop_s", "key"),
    [(0.0, 0.5, "window_s"), (1.0, 2.0, "hop_s"), (1.0, -1.0, "hop_s"),
     (float("nan"), 0.5, "window_s"), ("10", 1.0, "window_s"), (1.0, 1e-6, "hop_s")],
)
def test_bad_values_name_the_key(window_s: object, hop_s: object, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        Windower(RATE_HZ, window_s, hop_s)  # type: ignore[arg-type]
