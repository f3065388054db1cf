"""ReplaySource: exact audio, file boundaries, pacing modes and unreadable files."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from edge_monitor.audio_in import replay
from edge_monitor.audio_in.capture import AudioSource, Chunk
from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.core.errors import AudioFileError, ConfigError
from edge_monitor.core.windowing import Windower

RATE_HZ = 16000


def _write(path: Path, seconds: float, seed: int) -> np.ndarray:
    """Noise written as float WAV or 24-bit FLAC; returns the samples as the file decodes."""
    audio = 0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE_HZ))
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_24" if path.suffix == ".flac" else "FLOAT"
    sf.write(path, audio.astype(np.float32), RATE_HZ, subtype=subtype)
    return sf.read(path, dtype="float32")[0]


def _collect(source: ReplaySource, limit_s: float = 30.0) -> list[Chunk]:
    chunks: list[Chunk] = []
    deadline = time.monotonic() + limit_s
    source.start()
    try:
        while not source.finished:
            assert time.monotonic() < deadline, "replay did not finish"
            chunk = source.get(timeout_s=0.1)
            if chunk is not None:
                chunks.append(chunk)
    finally:
        source.stop()
    return chunks


def _audio(chunks: list[Chunk]) -> list[Chunk]:
    """The chunks that carry audio (not the in-band reports of unreadable files)."""
    return [c for c in chunks if c.fault is None]


def test_fast_replay_delivers_every_sample_with_its_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.wav", 1.0, 1)
    b = _write(tmp_path / "sub" / "b.flac", 0.55, 2)
    source = ReplaySource([tmp_path], RATE_HZ, realtime=False, block_s=0.1, queue_s=0.2)
    assert isinstance(source, AudioSource)
    assert source.files == [tmp_path / "a.wav", tmp_path / "sub" / "b.flac"]
    chunks = _collect(source)
    first = [c for c in chunks if c.file == tmp_path / "a.wav"]
    second = [c for c in chunks if c.file == tmp_path / "sub" / "b.flac"]
    assert len(first) + len(second) == len(chunks)
    assert np.array_equal(np.concatenate([c.frames[:, 0] for c in first]), a)
    assert np.array_equal(np.concatenate([c.frames[:, 0] for c in second]), b)
    assert [c.file_offset_frame for c in second] == [0, 1600, 3200, 4800, 6400, 8000]
    # Separate recordings: a one-frame jump between files, contiguous inside a file.
    assert second[0].start_frame == first[-1].end_frame + 1
    assert all(y.start_frame == x.end_frame for x, y in itertools.pairwise(first))
    stats = source.stats()
    assert stats.frames == a.size + b.size and stats.dropped_chunks == 0
    assert stats.chunks == len(chunks) and source.fault is None


def test_windows_never_span_two_files(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", 1.0, 1)
    _write(tmp_path / "b.wav", 1.0, 2)
    windower = Windower(RATE_HZ, 0.5, 0.25)
    windows = []
    for chunk in _collect(ReplaySource([tmp_path], RATE_HZ, realtime=False, block_s=0.03)):
        windows += windower.push(chunk.frames[:, 0], chunk.start_frame)
    assert len(windows) == 6 and windower.gaps == 1


def test_realtime_replay_is_paced(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", 1.0, 1)
    started = time.monotonic()
    chunks = _collect(ReplaySource([tmp_path / "a.wav"], RATE_HZ, realtime=True, block_s=0.1))
    paced_s = time.monotonic() - started
    assert len(chunks) == 10
    # Paced: the chunks come out spread over roughly their duration (loose bound, no timing).
    assert chunks[-1].captured_at - chunks[0].captured_at > 0.5
    assert paced_s > 0.5


def test_realtime_replay_drops_and_counts_when_the_consumer_stalls(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", 0.5, 1)
    source = ReplaySource([tmp_path], RATE_HZ, realtime=True, block_s=0.1, queue_s=0.1)
    source.start()
    deadline = time.monotonic() + 30.0
    while source.stats().dropped_chunks + 1 < 5:  # one chunk fits in the queue
        assert time.monotonic() < deadline, "replay did not run"
        time.sleep(0.05)
    kept = source.get(timeout_s=1.0)
    source.stop()
    assert kept is not None and kept.file_offset_frame == 0
    stats = source.stats()
    assert (stats.chunks, stats.dropped_chunks, stats.frames) == (1, 4, 1600)


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    _write(tmp_path / "a_good.wav", 0.5, 1)
    (tmp_path / "b_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    _write(tmp_path / "c_good.wav", 0.5, 2)
    source = ReplaySource([tmp_path], RATE_HZ, realtime=False)
    chunks = _collect(source)
    assert {c.file.name for c in _audio(chunks)} == {"a_good.wav", "c_good.wav"}
    reports = [c for c in chunks if c.fault is not None]
    assert [c.file.name for c in reports] == ["b_corrupt.wav"]  # in its place in the stream
    position = next(i for i, c in enumerate(chunks) if c is reports[0])
    assert position == len([c for c in chunks if c.file.name == "a_good.wav"])
    assert reports[0].frames.shape == (0, 1) and "b_corrupt.wav" in reports[0].fault
    stats = source.stats()
    assert stats.skipped_files == 1 and "b_corrupt.wav" in stats.last_error
    assert list(source.unreadable) == [tmp_path / "b_corrupt.wav"]
    assert stats.chunks == len(_audio(chunks))
    assert "b_corrupt.wav" in caplog.text and source.fault is None


def test_loop_repeats_until_stopped_and_all_bad_files_is_a_fault(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", 0.2, 1)
    source = ReplaySource([tmp_path / "a.wav"], RATE_HZ, realtime=False, loop=True, block_s=0.1)
    source.start()
    got = [source.get(timeout_s=5.0) for _ in range(7)]
    source.stop()
    assert [c.file_offset_frame for c in got] == [0, 1600, 0, 1600, 0, 1600, 0]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"not audio")
    broken = ReplaySource([tmp_path / "bad"], RATE_HZ, realtime=False, loop=True)
    assert _audio(_collect(broken)) == []
    assert broken.fault is not None and "x.wav" in broken.fault


def test_resamples_and_maps_channels(tmp_path: Path) -> None:
    stereo = np.stack([np.full(32000, 0.25), np.full(32000, -0.5)], axis=1)
    sf.write(tmp_path / "s.wav", stereo.astype(np.float32), 32000, subtype="FLOAT")
    mono = np.concatenate(
        [c.frames for c in _collect(ReplaySource([tmp_path], RATE_HZ, realtime=False))]
    )
    assert mono.shape == (16000, 1) and np.allclose(mono[1000:-1000], -0.125, atol=1e-3)
    two = np.concatenate(
        [c.frames for c in _collect(ReplaySource([tmp_path], RATE_HZ, 2, realtime=False))]
    )
    assert two.shape == (16000, 2) and np.allclose(two[1000:-1000], [0.25, -0.5], atol=1e-3)
    three = ReplaySource([tmp_path], RATE_HZ, 3, realtime=False)
    assert _audio(_collect(three)) == [] and "has 2 channels" in three.stats().last_error


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match=r"nowhere\.wav: no such file"):
        ReplaySource([tmp_path / "nowhere.wav"], RATE_HZ)
    with pytest.raises(AudioFileError, match=r"no \.wav/\.flac files"):
        ReplaySource([tmp_path], RATE_HZ)
    with pytest.raises(ConfigError, match=r"^block_s:"):
        ReplaySource([tmp_path], RATE_HZ, block_s=0)


def test_long_files_are_decoded_and_resampled_a_block_at_a_time(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setattr(replay, "READ_FRAMES", 1000)  # many decode blocks in a short file
    rng = np.random.default_rng(5)
    stereo = (0.1 * rng.standard_normal((48000 * 3 + 123, 2))).astype(np.float32)
    sf.write(tmp_path / "long.wav", stereo, 48000, subtype="FLOAT")
    chunks = _collect(ReplaySource([tmp_path], RATE_HZ, realtime=False, block_s=0.1))
    streamed = np.concatenate([c.frames for c in chunks])
    whole = soxr.resample(stereo.mean(axis=1), 48000, RATE_HZ)
    assert streamed.shape == (whole.size, 1)
    assert np.allclose(streamed[:, 0], whole, atol=1e-4)
    assert [c.file_offset_frame for c in chunks[:3]] == [0, 1600, 3200]
    assert all(c.frames.shape[0] == 1600 for c in chunks[:-1])


def test_a_truncated_file_plays_up_to_the_damage_then_counts_as_skipped(tmp_path: Path,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(replay, "READ_FRAMES", 1000)
    _write(tmp_path / "a.flac", 4.0, 1)
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "a.flac").write_bytes(data[: len(data) // 2])  # the header still says 4 s
    source = ReplaySource([tmp_path], RATE_HZ, realtime=False, block_s=0.1)
    chunks = _collect(source)
    assert 0 < sum(c.frames.shape[0] for c in chunks) < 4 * RATE_HZ
    stats = source.stats()
    assert stats.skipped_files == 1 and "a.flac" in stats.last_error
