"""Cost of the audio path: windowing, fast replay, clip saving and (optionally) live capture.

    .venv/bin/python tools/bench_capture.py [--device pulse --live-s 20]

Prints one line per figure. Live capture needs an input device (e.g. PulseAudio's `pulse`);
its CPU figure is this process's CPU time over wall time while recording and windowing,
the number that matters for "a few percent of one core" on a small box.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_monitor.audio_in.capture import SoundDeviceSource
from edge_monitor.audio_in.replay import ReplaySource
from edge_monitor.core.windowing import Windower
from edge_monitor.pipeline.clip_store import ClipStore

RATE_HZ = 16000
WINDOW_S = 10.0
HOP_S = 1.0


def _noise(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(seconds * RATE_HZ))).astype(np.float32)


def bench_windowing(audio_s: float) -> None:
    audio = _noise(audio_s)
    for chunk in (160, 1600, 16000):
        windower = Windower(RATE_HZ, WINDOW_S, HOP_S)
        start = time.perf_counter()
        count = 0
        for pos in range(0, audio.size, chunk):
            count += len(windower.push(audio[pos : pos + chunk], pos))
        cost_s = time.perf_counter() - start
        print(
            f"windowing chunk={chunk:>5} frames: {count} windows, "
            f"{1e3 * cost_s / audio_s:.3f} ms CPU per s of audio, "
            f"{audio_s / cost_s:,.0f}x real time"
        )


def bench_replay(audio_s: float, workdir: Path) -> None:
    path = workdir / "replay.wav"
    sf.write(path, _noise(audio_s), RATE_HZ, subtype="PCM_16")
    source = ReplaySource([path], RATE_HZ, realtime=False, block_s=0.1)
    windower = Windower(RATE_HZ, WINDOW_S, HOP_S)
    start = time.perf_counter()
    source.start()
    windows = 0
    while not source.finished:
        chunk = source.get(timeout_s=0.5)
        if chunk is not None:
            windows += len(windower.push(chunk.frames[:, 0], chunk.start_frame))
    wall_s = time.perf_counter() - start
    source.stop()
    print(
        f"replay fast + windowing: {audio_s:.0f} s of audio in {wall_s:.2f} s "
        f"({audio_s / wall_s:,.0f}x real time), {windows} windows, "
        f"dropped={source.stats().dropped_chunks}"
    )


def bench_clip_store(workdir: Path, saves: int) -> None:
    store = ClipStore(workdir / "clips", max_clips=5, max_bytes=None, max_age_s=None)
    clip = _noise(WINDOW_S)
    start = time.perf_counter()
    for i in range(saves):
        path = store.save("bench", clip, RATE_HZ, f"e{i}", time.time() + i)
    cost_s = (time.perf_counter() - start) / saves
    print(
        f"clip save ({WINDOW_S:.0f} s, FLAC 16-bit, fsync, retention): {1e3 * cost_s:.1f} ms, "
        f"{path.stat().st_size / 1e3:.0f} kB per clip"
    )


def bench_live(device: str, live_s: float) -> None:
    source = SoundDeviceSource(device, 1, RATE_HZ, block_s=0.1, queue_s=5.0)
    windower = Windower(RATE_HZ, WINDOW_S, HOP_S)
    source.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    windows = 0
    while time.perf_counter() - wall0 < live_s:
        chunk = source.get(timeout_s=0.5)
        if chunk is not None:
            windows += len(windower.push(chunk.frames[:, 0], chunk.start_frame))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    source.stop()
    stats = source.stats()
    print(
        f"live capture {device!r} at {source.sample_rate_hz} Hz for {wall_s:.0f} s: "
        f"CPU {100 * cpu_s / wall_s:.2f}% of one core, {windows} windows, "
        f"overflows={stats.overflows} dropped={stats.dropped_chunks} fault={source.fault}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-s", type=float, default=600.0, help="audio for offline benches")
    parser.add_argument("--device", default=None, help="input device for the live bench")
    parser.add_argument("--live-s", type=float, default=20.0, help="seconds of live capture")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        bench_windowing(args.audio_s)
        bench_replay(args.audio_s, Path(tmp))
        bench_clip_store(Path(tmp), saves=20)
    if args.device is not None:
        bench_live(args.device, args.live_s)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB (includes the {args.audio_s:.0f} s test signal)")


if __name__ == "__main__":
    main()
