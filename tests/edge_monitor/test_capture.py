"""SoundDeviceSource against a real PulseAudio server: exact audio, faults and self-healing."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from edge_monitor.audio_in.capture import AudioSource, Chunk, SoundDeviceSource, resolve_device
from edge_monitor.core.errors import ConfigError

RATE_HZ = 16000
WAIT_S = 20.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _first_chunk(source: SoundDeviceSource) -> Chunk:
    chunk = source.get(timeout_s=WAIT_S)
    assert chunk is not None, f"no audio arrived; fault={source.fault}"
    return chunk


def _drain(source: SoundDeviceSource) -> list[Chunk]:
    chunks = []
    while (chunk := source.get(timeout_s=0.0)) is not None:
        chunks.append(chunk)
    return chunks


def _noise_wav(path: Path, seconds: float = 1.0) -> np.ndarray:
    """A padded noise burst written as 16-bit WAV; returns the burst as the file decodes it."""
    burst = 0.3 * np.random.default_rng(7).standard_normal(int(seconds * RATE_HZ))
    pad = np.zeros(RATE_HZ // 2)
    sf.write(path, np.concatenate([pad, np.clip(burst, -1, 1), pad]), RATE_HZ, subtype="PCM_16")
    decoded, _ = sf.read(path, dtype="float32")
    return decoded[pad.size : pad.size + burst.size]


def test_played_clip_arrives_bit_exact(pulse, tmp_path: Path) -> None:
    burst = _noise_wav(tmp_path / "burst.wav")
    source = SoundDeviceSource(pulse.device, channels=1, sample_rate_hz=RATE_HZ, block_s=0.05)
    assert isinstance(source, AudioSource)
    source.start()
    try:
        chunks = [_first_chunk(source)]
        pulse.play(tmp_path / "burst.wav")
        time.sleep(0.5)
        chunks += _drain(source)
        stats = source.stats()
    finally:
        source.stop()
    assert source.fault is None and source.sample_rate_hz == RATE_HZ
    for before, after in itertools.pairwise(chunks):
        assert after.start_frame == before.end_frame  # contiguous: nothing lost
    assert all(c.frames.dtype == np.float32 and c.frames.shape[1] == 1 for c in chunks)
    recorded = np.concatenate([c.frames[:, 0] for c in chunks])
    assert stats.frames >= recorded.size and stats.dropped_chunks == 0
    lag = int(np.argmax(np.abs(correlate(recorded, burst, mode="valid", method="fft"))))
    assert np.max(np.abs(recorded[lag : lag + burst.size] - burst)) <= 1.0 / 32768


def test_losing_pulseaudio_sets_fault_and_recovers_by_itself(pulse) -> None:
    source = SoundDeviceSource(
        pulse.device, channels=1, sample_rate_hz=RATE_HZ, block_s=0.05,
        retry_min_s=0.2, retry_max_s=0.5,
    )
    source.start()
    try:
        before = _first_chunk(source)
        pulse.stop()
        _wait_for(lambda: source.fault is not None, "a fault after PulseAudio died")
        assert source.fault.startswith("input device")
        assert source.stats().restarts == 0
        time.sleep(1.0)  # a few failed reopen attempts while the server is away
        assert source.fault is not None
        pulse.start()
        _wait_for(lambda: source.fault is None, "recovery after PulseAudio came back")
        stats = source.stats()
        assert stats.restarts == 1 and stats.last_error.startswith("input device")
        _drain(source)
        after = _first_chunk(source)
    finally:
        source.stop()
    # The outage shows as a jump in the frame counter, so a windower starts over.
    assert after.start_frame > before.end_frame + RATE_HZ // 2


def test_unplugged_source_is_a_fault_until_it_comes_back(pulse) -> None:
    source = SoundDeviceSource(
        pulse.device, channels=1, sample_rate_hz=RATE_HZ, block_s=0.05,
        retry_min_s=0.2, retry_max_s=0.5,
    )
    source.start()
    try:
        _first_chunk(source)
        pulse.remove_sink()
        _wait_for(lambda: source.fault is not None, "a fault after the source vanished")
        assert "'pulse'" in source.fault
        time.sleep(1.0)
        assert source.fault is not None and source.stats().restarts == 0
        pulse.add_sink()
        _wait_for(lambda: source.fault is None, "recovery after the source came back")
        _drain(source)
        assert _first_chunk(source).frames.shape[1] == 1
    finally:
        source.stop()
    assert source.stats().restarts == 1


def test_full_queue_drops_and_counts_instead_of_blocking(pulse) -> None:
    source = SoundDeviceSource(
        pulse.device, channels=1, sample_rate_hz=RATE_HZ, block_s=0.05, queue_s=0.1
    )
    source.start()
    try:
        _wait_for(lambda: source.stats().dropped_chunks >= 3, "dropped chunks")
        kept = _drain(source)
    finally:
        source.stop()
    assert 1 <= len(kept) <= 2 and source.fault is None


def test_device_names_resolve_and_unknown_names_list_the_inputs(pulse) -> None:
    assert resolve_device("PULSE").name == "pulse"
    index = resolve_device("pulse").index
    assert resolve_device(str(index)).index == index
    unknown = r"^device: no input device name contains 'no-such-mic'.*pulse"
    with pytest.raises(ConfigError, match=unknown):
        resolve_device("no-such-mic")


def test_absent_device_is_a_fault_not_a_crash(pulse) -> None:
    source = SoundDeviceSource("no-such-mic", channels=1, sample_rate_hz=RATE_HZ, retry_min_s=0.1)
    source.start()
    try:
        assert source.fault is not None and "no-such-mic" in source.fault
        assert source.get(timeout_s=0.2) is None
    finally:
        source.stop()


def test_unsupported_rate_falls_back_to_the_device_default(pulse) -> None:
    requested = 1_000_000  # no device takes this; the pulse plugin's default is used instead
    source = SoundDeviceSource(pulse.device, channels=1, sample_rate_hz=requested, block_s=0.05)
    source.start()
    try:
        chunk = _first_chunk(source)
    finally:
        source.stop()
    default = resolve_device(pulse.device).default_sample_rate_hz
    assert source.sample_rate_hz == default == chunk.sample_rate_hz


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"channels": 0}, "channels"), ({"block_s": 0.0}, "block_s"),
     ({"queue_s": 0.01, "block_s": 0.1}, "queue_s"), ({"sample_rate_hz": 0}, "sample_rate_hz")],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    settings = {"channels": 1, "sample_rate_hz": RATE_HZ, **kwargs}
    with pytest.raises(ConfigError, match=f"^{key}:"):
        SoundDeviceSource(None, **settings)
