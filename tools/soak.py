"""Accelerated soak of the daemon: replay as fast as possible for N minutes, watch memory.

Runs the real `edge-monitor run` process on a looped synthetic recording with faults (so
alarms, clips with retention, MQTT events through a local mosquitto and the journal are all
exercised), replayed as fast as the box allows, for `--minutes` of wall time. Every
`--sample-s` it records the process's RSS and the daemon's own counters (from its stats log
line). At the end it prints the samples and a summary: RSS after warm-up vs at the end and
the fitted slope, windows processed against windows expected from the frames delivered
(a dropped window shows as a difference), dropped chunks, overflows, windower gaps, and
the number of clips kept on disk. Nothing asserts: it measures and prints.

    .venv/bin/python tools/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_daemon import LEARN_S, RATE, WINDOW_S, daemon_config, proc_status_kb, start_broker
from scipy.stats import theilslopes

from edge_monitor.demo.synth import MachineSpec, demo_timeline, synthesize, write_audio

STATS_RE = re.compile(
    r"stats: (\d+) windows \((\d+) scored, (\d+) late, max lag ([\d.]+) s\), (\d+) dropped "
    r"chunks, (\d+) overflows, (\d+) gaps, (\d+) frames")
WARMUP_S = 120.0


def last_stats(log_path: Path) -> tuple[int, ...] | None:
    found = STATS_RE.findall(log_path.read_text(errors="replace"))
    if not found:
        return None
    windows, scored, late, _lag, dropped, overflows, gaps, frames = found[-1]
    return tuple(int(v) for v in (windows, scored, late, dropped, overflows, gaps, frames))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--hop-s", type=float, default=1.0)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    total_s = LEARN_S + 600.0
    audio = synthesize(MachineSpec(seed=5), total_s, RATE,
                       demo_timeline(total_s, lead_s=LEARN_S + 30.0, fault_s=20.0, gap_s=60.0))
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    clip = write_audio(workdir / "machine.flac", audio, RATE)
    broker, port = start_broker(workdir)
    config = daemon_config(workdir, [clip], False, args.hop_s, port, None, loop=True)
    log_path = workdir / "soak.log"
    cmd = [sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(config)]
    samples: list[tuple[float, float, tuple[int, ...]]] = []
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        started = time.monotonic()
        end = started + args.minutes * 60.0
        print(f"{'t s':>7} {'RSS MB':>8} {'windows':>9} {'audio h':>8} {'dropped':>8}")
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(args.sample_s)
            stats = last_stats(log_path)
            if stats is None or proc.poll() is not None:
                continue
            rss_mb = proc_status_kb(proc.pid, "VmRSS") / 1024.0
            t = time.monotonic() - started
            samples.append((t, rss_mb, stats))
            print(f"{t:7.0f} {rss_mb:8.1f} {stats[0]:9d} {stats[6] / RATE / 3600:8.2f} "
                  f"{stats[3]:8d}", flush=True)
        peak_mb = proc_status_kb(proc.pid, "VmHWM") / 1024.0 if proc.poll() is None else 0.0
        proc.terminate()
        rc = proc.wait(60)
        final = last_stats(log_path)
        clips = len(list((workdir / "state" / "clips").glob("*.flac")))
        journal = workdir / "state" / "mqtt-journal.sqlite"
        journal_kb = journal.stat().st_size / 1024 if journal.exists() else 0.0
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    if final is None or not samples:
        print(f"no statistics were logged; see {log_path}")
        return 1
    windows, scored, late, dropped, overflows, gaps, frames = final
    hop = int(args.hop_s * RATE)
    window = int(WINDOW_S * RATE)
    expected = (frames - window) // hop + 1 if frames >= window else 0
    after = [(t, rss) for t, rss, _ in samples if t >= WARMUP_S] or [
        (t, rss) for t, rss, _ in samples]
    ts, rss = np.array(after).T
    # Theil-Sen: the replay source decodes its whole file again at each loop, a short spike
    # that a least-squares line would mistake for a trend.
    slope = float(theilslopes(rss, ts)[0]) * 3600.0 if len(ts) > 1 else 0.0
    third = max(1, len(rss) // 3)
    print(f"\nsoak: {samples[-1][0] / 60:.1f} min wall, exit code {rc}")
    print(f"  audio processed: {frames / RATE / 3600:.2f} h ({frames / RATE / samples[-1][0]:.0f}x "
          f"real time), windows {windows} (scored {scored}), expected from frames {expected}")
    print(f"  dropped chunks {dropped}, overflows {overflows}, windower gaps {gaps}, "
          f"late windows {late}")
    print(f"  RSS median of the first third after warm-up {np.median(rss[:third]):.1f} MB, of "
          f"the last third {np.median(rss[-third:]):.1f} MB, min {rss.min():.1f}, max "
          f"{rss.max():.1f}, robust slope {slope:+.2f} MB/h, peak (VmHWM) {peak_mb:.1f} MB")
    print(f"  clips kept {clips} (max_clips 20), MQTT journal file {journal_kb:.0f} kB")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
