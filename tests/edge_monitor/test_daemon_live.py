"""The daemon on a real sounddevice stream through a PulseAudio null sink, in real time.

A synthetic machine is played into the sink: the daemon learns it, judges it normal, then
raises an alarm on a bearing fault. Killing PulseAudio makes the state `fault`; starting it
again recovers without restarting the daemon.
"""

from __future__ import annotations

import time

import pytest
from daemon_support import (
    RATE,
    DaemonThread,
    dedupe,
    learn_first,
    small_config,
    status_of,
    synth,
    write_config,
    write_flac,
)

from edge_monitor.demo.synth import FaultSegment

pytestmark = pytest.mark.slow


def live_config(tmp_path, pulse, source=None, **overrides):
    """PulseAudio's monitor stream can take a second or two to deliver its first block."""
    return small_config(
        tmp_path, None,
        source={"kind": "sounddevice", "device": pulse.device, "block_s": 0.05, "reopen_s": 0.2,
                **(source or {})},
        faults={"silence_s": 5, "no_audio_s": 3.0},
        **overrides,
    )


def test_live_learning_then_normal_then_anomaly(tmp_path, pulse):
    # 7 s to learn 6 windows (plus start-up), 4 s normal, 5 s with a bearing fault.
    audio = synth(16.0, (FaultSegment("bearing", 11.0, 16.0),), seed=7)
    clip = write_flac(tmp_path / "machine.flac", audio)
    # Record at 48 kHz: every window is resampled to the model's 16 kHz, learning included.
    config = live_config(tmp_path, pulse, source={"sample_rate_hz": 48000},
                         learning={"seconds": 6}, decision={"threshold_scale": 2.5})
    daemon = DaemonThread(write_config(tmp_path, config))
    seen: list[str] = []
    try:
        daemon.wait_until(lambda s: status_of(s) == "learning", "learning")
        player = pulse.play_async(clip)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and player.poll() is None:
            snap = daemon.daemon.processor.snapshot()
            seen.append(status_of(snap))
            if seen[-1] == "anomaly":
                break
            time.sleep(0.05)
        player.kill()
        player.wait()
    finally:
        assert daemon.stop() == 0
    assert dedupe(seen) == ["learning", "normal", "anomaly"], dedupe(seen)
    assert daemon.daemon.processor.snapshot()["source_rate_hz"] == 48000


def test_pulseaudio_gone_is_a_fault_and_its_return_recovers(tmp_path, pulse):
    audio = synth(40.0, seed=7)
    learn = write_flac(tmp_path / "learn.flac", audio[: 12 * RATE])
    live = write_flac(tmp_path / "live.flac", audio[12 * RATE:])
    learn_first(tmp_path, learn)
    config = live_config(tmp_path, pulse)
    player = pulse.play_async(live)
    daemon = DaemonThread(write_config(tmp_path, config))
    try:
        first = daemon.wait_until(lambda s: status_of(s) == "normal" and s["scored_windows"] > 2,
                                  "normal on live audio")
        assert first["source_rate_hz"] == RATE
        pulse.stop()
        player.wait()
        faulted = daemon.wait_until(lambda s: status_of(s) == "fault", "a fault")
        assert "input" in faulted["machines"]["pump"]["reason"]
        pulse.start()
        player = pulse.play_async(live)
        daemon.wait_until(
            lambda s: status_of(s) == "normal" and s["source_restarts"] >= 1
            and s["scored_windows"] > faulted["scored_windows"] + 2, "recovery", 20)
    finally:
        player.kill()
        player.wait()
        assert daemon.stop() == 0
