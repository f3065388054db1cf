"""Benchmark the monitor daemon: cost per stage and window, real-time factor, CPU and memory.

Prints, per model (the built-in logmel-stats; and each model of a bundle given with
--bundle):
  1. the cost of each stage per window (resample from the device rate, preprocess, embed,
     score), mean and 95th percentile, and the real-time factor at the configured hop
     (processing seconds per second of audio);
  2. the whole daemon (`edge-monitor run`, a real process) on the replay source as fast as
     it goes: windows per second and real-time factor end to end;
  3. the whole daemon "live": the replay source paced in real time, as a microphone would
     deliver audio: CPU load in % of one core, peak RSS (VmHWM), late windows, dropped audio;
  4. with --web: the web view's cost. The daemon runs in this process, live at 16 kHz, with
     the web view off, on and idle, and on with one browser's event stream open plus a
     Prometheus scrape every 15 s (both from a separate process): CPU in % of one core of
     the whole process and of each thread (from /proc/self/task), and the thread count; the
     processing thread is the audio path. Also the live feed's cost per window.

Audio is a synthetic machine (edge_monitor.demo.synth) with faults, so alarms, clips and MQTT
events happen as they would on site. A mosquitto broker is started on a free loopback port
when the binary is installed. Nothing here asserts: it measures and prints.

    .venv/bin/python tools/bench_daemon.py [--bundle DIR] [--live-s 60] [--hop-s 1.0] [--web]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

from edge_monitor.core.audio_io import StreamResampler, resample
from edge_monitor.core.detector import Detector
from edge_monitor.core.preprocess import PreprocessConfig, preprocess
from edge_monitor.daemon import BLAS_THREADS, Daemon
from edge_monitor.demo.synth import MachineSpec, demo_timeline, synthesize, write_audio
from edge_monitor.pipeline.learning import BankLearner, builtin_embedder, learned_detector
from edge_monitor.pipeline.live import LiveFeed

RATE = 16000
LEARN_S = 300.0
WINDOW_S = 10.0
STATS_RE = re.compile(r"stats: (\d+) windows \((\d+) scored, (\d+) late, max lag ([\d.]+) s\), "
                      r"(\d+) dropped chunks, (\d+) overflows")


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def stage_costs(detector: Detector, audio: np.ndarray, device_rate: int, hop_s: float,
                windows: int) -> None:
    """Time each stage separately on real windows, as the daemon runs them per hop.

    Resampling is streamed (each hop of new device audio once), like the processing loop.
    Times are CPU seconds of this process (BLAS limited to one thread, as in the daemon), so
    other load on the box does not inflate them.
    """
    n = int(detector.window_s * RATE)
    hop_in = int(hop_s * device_rate)
    device_audio = resample(audio, RATE, device_rate) if device_rate != RATE else audio
    stream = StreamResampler(device_rate, detector.sample_rate_hz)
    times: dict[str, list[float]] = {"resample": [], "preprocess": [], "embed": [], "score": []}
    clock = time.process_time
    step = max(1, (len(audio) - n) // windows)
    for i, start in enumerate(range(0, step * windows, step)):
        x = audio[start:start + n]
        t0 = clock()
        stream.push(device_audio[i * hop_in:(i + 1) * hop_in])
        t1 = clock()
        conditioned = preprocess(x, detector.sample_rate_hz, detector.preprocess_config)
        t2 = clock()
        vectors = {m.name: m.embedder.embed(conditioned.audio) for m in detector.members}
        t3 = clock()
        for m in detector.members:
            m.scorer.score(vectors[m.name][None, :])
        t4 = clock()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(value)
    total = [sum(parts) for parts in zip(*times.values(), strict=True)]
    names = "+".join(m.name for m in detector.members)
    print(f"\n[{names}] window {detector.window_s:g} s, device {device_rate} Hz -> model "
          f"{detector.sample_rate_hz} Hz, {windows} windows, bank sizes "
          f"{[len(m.bank) for m in detector.members]}")
    print(f"  {'stage (CPU)':<11} {'mean ms':>9} {'p95 ms':>9}")
    for key, values in {**times, "total": total}.items():
        print(f"  {key:<11} {np.mean(values) * 1000:9.2f} {percentile_ms(values, 95):9.2f}")
    mean = float(np.mean(total))
    print(f"  real-time factor at hop {hop_s:g} s: {mean / hop_s:.4f} "
          f"(= {100 * mean / hop_s:.2f}% of one core for the window work alone)")


WEB_WARMUP_S = 5.0
WEB_MODES = ("web off", "web on, idle", "web on, 1 page + scrape/15 s")
# A browser's event stream and a Prometheus scrape, from a process of their own.
CLIENT = """
import sys, threading, time, urllib.request
base = sys.argv[1]
def scrape():
    while True:
        urllib.request.urlopen(base + "/metrics").read()
        time.sleep(15)
threading.Thread(target=scrape, daemon=True).start()
stream = urllib.request.urlopen(base + "/api/stream")
while stream.read(1024):
    pass
"""


def feed_cost_us(n: int = 100_000) -> float:
    """Microseconds the processing thread spends per window on the live feed."""
    feed = LiveFeed()
    t0 = time.perf_counter()
    for i in range(n):
        feed.add_score("machine", float(i), 0.5, 1.0)
        feed.observe_inference("machine", 0.004)
    return (time.perf_counter() - t0) / n * 1e6


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process, by native id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def web_cost(workdir: Path, short: Path, hop_s: float, port: int, seconds: float) -> None:
    """The daemon in this process, live, with the web view off / idle / in use."""
    print(f"\n[web view cost: daemon live (real-time replay at {RATE} Hz), {seconds:.0f} s per "
          f"mode after {WEB_WARMUP_S:g} s of warm-up; % of one core]")
    print(f"  live feed: {feed_cost_us():.2f} us per window on the processing thread "
          "(add_score + observe_inference)")
    print(f"  {'mode':<30} {'process':>8} {'processing':>11} {'web':>6} {'threads':>8}")
    for mode in WEB_MODES:
        web_port = free_port()
        config_path = daemon_config(workdir, [short], True, hop_s, port, None, loop=True,
                                    rate=RATE)
        config = yaml.safe_load(config_path.read_text())
        config["web"] = {"enabled": mode != WEB_MODES[0], "port": web_port}
        config["logging"] = {"level": "WARNING"}
        config_path.write_text(yaml.safe_dump(config))
        daemon = Daemon(config_path)
        runner = threading.Thread(target=daemon.run, name="bench-daemon", daemon=True)
        runner.start()
        while daemon.processor is None or not daemon.processor.alive:
            time.sleep(0.05)
        client = None
        if mode == WEB_MODES[2]:
            client = subprocess.Popen([sys.executable, "-c", CLIENT,
                                       f"http://127.0.0.1:{web_port}"])
        time.sleep(WEB_WARMUP_S)
        names = {t.native_id: t.name for t in threading.enumerate()}
        before, t0 = thread_cpu_s(), time.monotonic()
        time.sleep(seconds)
        after, wall = thread_cpu_s(), time.monotonic() - t0
        threads = len(after)
        names.update({t.native_id: t.name for t in threading.enumerate()})
        if client is not None:
            client.terminate()
            client.wait(10)
        daemon.request_stop()
        runner.join(60)

        used: dict[str, float] = {}
        for tid, cpu in after.items():
            name = names.get(tid, "other")
            used[name] = used.get(name, 0.0) + cpu - before.get(tid, 0.0)
        process = 100 * sum(used.values()) / wall
        processing = 100 * used.get("processing", 0.0) / wall
        web = f"{100 * used.get('web', 0.0) / wall:6.2f}" if mode != WEB_MODES[0] else f"{'-':>6}"
        print(f"  {mode:<30} {process:8.2f} {processing:11.2f} {web} {threads:8d}")
    print("  (threads: all of the process, this benchmark's main thread included; the audio "
          "path is the replay reader and the processing thread in every mode)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, int]:
    if shutil.which("mosquitto") is None:
        return None, 0
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, 0


def daemon_config(workdir: Path, files: list[Path], realtime: bool, hop_s: float, port: int,
                  bundle: Path | None, loop: bool = False, rate: int | None = None,
                  bundle_machine: str | None = None) -> Path:
    config = {
        "device_id": "bench",
        "state_dir": str(workdir / "state"),
        "source": {"kind": "replay", "block_s": 0.1, "sample_rate_hz": rate,
                   "replay": {"paths": [str(f) for f in files], "realtime": realtime,
                              "loop": loop, "contiguous": True}},
        "machines": [{"name": "machine", "bundle_machine": bundle_machine}],
        "model": {"bundle": str(bundle) if bundle else None},
        "windows": {"hop_s": hop_s},
        "learning": {"seconds": LEARN_S},
        "alarm_audio": {"max_clips": 20},
        "mqtt": {"enabled": port > 0, "host": "127.0.0.1", "port": port or 1883},
        "logging": {"stats_interval_s": 5.0},
    }
    path = workdir / f"bench-{'live' if realtime else 'fast'}-{rate}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_daemon(config: Path, log_path: Path, seconds: float | None) -> dict[str, float]:
    """Run `edge-monitor run`; stop it with SIGTERM after `seconds` (None: until it ends)."""
    cmd = [sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(config)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    # Measure from the moment the daemon runs (imports and learning excluded).
    while "edge-monitor running" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited early:\n{log_path.read_text()}")
        time.sleep(0.05)
    cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
    peak_kb = 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, proc_status_kb(proc.pid, "VmHWM"))
        cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
        if seconds is not None and t1 - t0 >= seconds:
            proc.terminate()
            break
        time.sleep(0.2)
    proc.wait(60)
    stats = STATS_RE.findall(log_path.read_text(errors="replace"))
    windows, scored, late, max_lag, dropped, overflows = (float(v) for v in stats[-1])
    return {"wall_s": t1 - t0, "cpu_s": cpu1 - cpu0, "peak_rss_mb": peak_kb / 1024.0,
            "windows": windows, "scored": scored, "late": late, "max_lag_s": max_lag,
            "dropped": dropped, "overflows": overflows, "total_s": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="also measure this bundle's models")
    parser.add_argument("--hop-s", type=float, default=1.0)
    parser.add_argument("--device-rate", type=int, default=48000,
                        help="device rate for the resample stage (default 48000)")
    parser.add_argument("--windows", type=int, default=60, help="windows timed per model")
    parser.add_argument("--live-s", type=float, default=60.0, help="seconds of each live run")
    parser.add_argument("--live-rates", type=int, nargs="+", default=[16000, 48000],
                        help="device rates of the live runs (48000: the daemon resamples)")
    parser.add_argument("--skip-daemon", action="store_true", help="stage costs only")
    parser.add_argument("--web", action="store_true",
                        help="also measure the web view's cost (three more live runs)")
    parser.add_argument("--web-only", action="store_true",
                        help="learn the bank, then measure only the web view's cost")
    args = parser.parse_args()
    # The generated config lives in a temporary directory: give it an absolute bundle path.
    args.bundle = args.bundle.resolve() if args.bundle is not None else None
    threadpool_limits(limits=BLAS_THREADS, user_api="blas")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")

    total_s = LEARN_S + 300.0
    audio = synthesize(MachineSpec(seed=11), total_s, RATE,
                       demo_timeline(total_s, lead_s=LEARN_S + 30.0, fault_s=20.0, gap_s=40.0))
    workdir = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    clip = write_audio(workdir / "machine.flac", audio, RATE)
    # Live runs loop a short recording: a microphone holds no file in memory.
    short = write_audio(workdir / "live.flac", audio[int(LEARN_S * RATE):][: 60 * RATE], RATE)

    embedder = builtin_embedder(RATE, WINDOW_S)
    learner = BankLearner("machine", embedder, workdir / "stage-bank", LEARN_S, "knn",
                          PreprocessConfig())
    n = int(WINDOW_S * RATE)
    for start in range(0, int(LEARN_S * RATE), n):
        learner.add(audio[start:start + n], start, start + n)
    detector = learned_detector("machine", embedder, learner.build(), 0.01, PreprocessConfig())
    judged = audio[int(LEARN_S * RATE):]
    stage_costs(detector, judged, args.device_rate, args.hop_s, args.windows)
    bundle_machine = None
    if args.bundle is not None:
        from edge_monitor.core.bundle import load_bundle

        for machine, bundled in load_bundle(args.bundle).detectors().items():
            print(f"bundle machine {machine}:")
            stage_costs(bundled, judged, args.device_rate, args.hop_s, args.windows)
            bundle_machine = bundle_machine or machine  # the daemon runs the first one

    if args.skip_daemon:
        return 0
    broker, port = start_broker(workdir)
    try:
        fast = run_daemon(daemon_config(workdir, [clip], False, args.hop_s, port, args.bundle,
                                        bundle_machine=bundle_machine),
                          workdir / "fast.log", None)
        if args.web_only:
            web_cost(workdir, short, args.hop_s, port, args.live_s)
            return 0
        judged_s = total_s - LEARN_S if args.bundle is None else total_s
        print(f"\n[daemon, replay as fast as possible] {total_s:.0f} s of audio "
              f"({judged_s:.0f} s judged) in {fast['wall_s']:.1f} s: {fast['windows']:.0f} "
              f"windows ({fast['windows'] / fast['wall_s']:.1f}/s), real-time factor "
              f"{fast['wall_s'] / total_s:.4f}, CPU {fast['cpu_s']:.1f} s, "
              f"peak RSS {fast['peak_rss_mb']:.0f} MB, dropped chunks {fast['dropped']:.0f}")
        for rate in args.live_rates:
            config = daemon_config(workdir, [short], True, args.hop_s, port, args.bundle,
                                   loop=True, rate=rate, bundle_machine=bundle_machine)
            live = run_daemon(config, workdir / f"live-{rate}.log", args.live_s)
            print(f"[daemon, live (real-time replay at {rate} Hz), {live['wall_s']:.0f} s, hop "
                  f"{args.hop_s:g} s] CPU load {100 * live['cpu_s'] / live['wall_s']:.2f}% of "
                  f"one core, peak RSS {live['peak_rss_mb']:.0f} MB, {live['windows']:.0f} "
                  f"windows ({live['scored']:.0f} scored), late {live['late']:.0f}, max lag "
                  f"{live['max_lag_s']:.2f} s, dropped chunks {live['dropped']:.0f}")
        if args.web and args.bundle is None:
            web_cost(workdir, short, args.hop_s, port, args.live_s)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
