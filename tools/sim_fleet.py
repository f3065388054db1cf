"""Fleet simulation: N boxes of M machines at the daemon's real message rates into one
loopback mosquitto, and one consumer of everything (`edge-monitor/#`).

Each box is its own MQTT connection (client id, Last Will, retained availability) and
publishes what a daemon publishes, built with the daemon's own topic and payload builders
(edge_monitor.mqtt.topics): retained state per machine at start, a score per machine every
hop (QoS 0, the dominant rate), and alarms (QoS 1 events new/update/end plus retained state
changes) at --alarms-per-hour per machine. Boxes are spread evenly over the hop, as
independent boxes are. Publishers run in --procs processes.

Reported over --seconds after a warm-up: messages per second published and received, the
consumer's lag (receive time minus the payload's own timestamp: broker queueing + delivery,
all on one clock), broker CPU in % of one core (from /proc), broker RSS, and the publishers'
CPU (so that a publisher that could not keep up shows as a shortfall, not as a fast broker).
Nothing here asserts: it measures and prints.

    .venv/bin/python tools/sim_fleet.py --boxes 100 --machines 4 --seconds 30
    .venv/bin/python tools/sim_fleet.py --boxes 1000 --machines 4 --seconds 30 --procs 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

from edge_monitor.demo.local_broker import LocalMosquitto, find_mosquitto, free_port
from edge_monitor.mqtt.topics import (
    AlarmEvent,
    MachineState,
    ScoreSample,
    TopicTree,
    new_id,
    utc_now,
)

HOST = "127.0.0.1"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
THRESHOLD = 0.05
KEEPALIVE_S = 60


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _client(client_id: str, will: tuple[str, bytes] | None = None) -> paho.Client:
    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                         client_id=client_id, protocol=paho.MQTTv311)
    if will is not None:
        client.will_set(will[0], will[1], 1, True)
    return client


def _publish(client: paho.Client, message) -> None:
    client.publish(message.topic, message.payload, message.qos, message.retain)


def publisher(index: int, boxes: list[str], machines: int, hop_s: float, port: int,
              run_s: float, alarms_per_hour: float, start_at: float, out: mp.Queue) -> None:
    """Boxes of one process: connect all, then publish on their slots until the end."""
    rng = random.Random(index)
    trees = [TopicTree(box) for box in boxes]
    names = [f"m{j}" for j in range(machines)]
    clients = []
    for tree in trees:
        will = tree.availability_message(online=False)
        client = _client(f"sim-{tree.device_id}", (will.topic, will.payload))
        client.connect(HOST, port, KEEPALIVE_S)
        clients.append(client)
    for client in clients:  # take the CONNACKs
        client.loop(timeout=0.1)
    now = utc_now()
    for tree, client in zip(trees, clients, strict=True):
        _publish(client, tree.availability_message(online=True))
        for name in names:
            _publish(client, tree.state_message(name, MachineState("normal", 0.02, THRESHOLD,
                                                                   now)))
    alarm_p = alarms_per_hour * hop_s / 3600.0
    published = 0
    open_alarms: dict[tuple[int, str], tuple[str, datetime]] = {}
    cpu0 = time.process_time()
    while time.time() < start_at:
        time.sleep(0.01)
    end = start_at + run_s
    tick = 0
    while time.time() < end:
        base = start_at + tick * hop_s
        for i, (tree, client) in enumerate(zip(trees, clients, strict=True)):
            slot = base + hop_s * (i + index / 7.0) / len(trees)
            delay = slot - time.time()
            if delay > 0:
                time.sleep(delay)
            at = utc_now()
            for name in names:
                score = 0.02 + 0.005 * rng.random()
                key = (i, name)
                if key in open_alarms:
                    event_id, started = open_alarms.pop(key)
                    _publish(client, tree.event_message(AlarmEvent(
                        "end", event_id, name, started, at, 0.09, THRESHOLD, "sim", "sim",
                        ended_at=at)))
                    _publish(client, tree.state_message(name, MachineState(
                        "normal", score, THRESHOLD, at)))
                    published += 2
                elif rng.random() < alarm_p:
                    event_id = new_id()
                    open_alarms[key] = (event_id, at)
                    score = 0.09
                    _publish(client, tree.event_message(AlarmEvent(
                        "new", event_id, name, at, at, score, THRESHOLD, "sim", "sim",
                        clip_path=f"/var/lib/edge-monitor/clips/{event_id}.flac")))
                    _publish(client, tree.state_message(name, MachineState(
                        "anomaly", score, THRESHOLD, at)))
                    published += 2
                _publish(client, tree.score_message(name, ScoreSample(score, THRESHOLD, at)))
                published += 1
            client.loop(timeout=0)  # PUBACKs, PINGREQ when due
        tick += 1
    cpu, elapsed = time.process_time() - cpu0, time.time() - start_at
    for client in clients:
        client.disconnect()
    out.put(("publisher", published / elapsed, cpu / elapsed))


def consumer(port: int, start_at: float, run_s: float, ready: mp.Event, out: mp.Queue) -> None:
    """Subscribe to everything; count and time what arrives within the measured window."""
    lags: list[float] = []
    count = [0]
    end = start_at + run_s

    def on_message(client, userdata, message) -> None:
        now = time.time()
        if not start_at <= now < end:
            return
        count[0] += 1
        if message.topic.endswith("/score"):
            at = message.payload.rsplit(b'"at":"', 1)[1][:-2].decode()
            lags.append(now - datetime.fromisoformat(at).timestamp())

    client = _client(f"sim-consumer-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: ready.set()
    client.on_connect = lambda c, *args: c.subscribe("edge-monitor/#", 1)
    client.connect(HOST, port, KEEPALIVE_S)
    cpu0 = time.process_time()
    while time.time() < end + 1.0:
        client.loop(timeout=0.05)
    cpu = time.process_time() - cpu0
    client.disconnect()
    out.put(("consumer", count[0], cpu, np.asarray(lags)))


def simulate(boxes: int, machines: int, hop_s: float, run_s: float, procs: int,
             alarms_per_hour: float, warmup_s: float) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # mosquitto inherits it
    with tempfile.TemporaryDirectory(prefix="sim-fleet-") as tmp:
        port = free_port()
        broker = LocalMosquitto(Path(tmp), [f"listener {port} {HOST}", "allow_anonymous true",
                                            "max_queued_messages 10000"], [port])
        broker.start()
        pid = broker.pid
        assert pid is not None
        try:
            out: mp.Queue = mp.Queue()
            ready = mp.Event()
            connect_s = max(5.0, boxes / 100.0)
            start_at = time.time() + connect_s + warmup_s
            measure_at = start_at + warmup_s
            cons = mp.Process(target=consumer, args=(port, measure_at, run_s, ready, out))
            cons.start()
            ready.wait(30)
            ids = [f"box-{i:04d}" for i in range(boxes)]
            workers = [mp.Process(target=publisher, args=(
                p, ids[p::procs], machines, hop_s, port, run_s + warmup_s, alarms_per_hour,
                start_at, out)) for p in range(procs)]
            for w in workers:
                w.start()
            while time.time() < measure_at:
                time.sleep(0.05)
            cpu0 = _cpu_s(pid)
            time.sleep(run_s)
            broker_cpu = (_cpu_s(pid) - cpu0) / run_s
            rss = _rss_mb(pid)
            results = [out.get(timeout=120) for _ in range(procs + 1)]
            for w in [*workers, cons]:
                w.join(30)
        finally:
            broker.stop()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pubs = [r for r in results if r[0] == "publisher"]
    cons_result = next(r for r in results if r[0] == "consumer")
    lags = cons_result[3]
    published_rate = sum(r[1] for r in pubs)
    return {
        "boxes": boxes, "machines": boxes * machines,
        "target_rate": boxes * machines / hop_s,
        "published_rate": published_rate,
        "received_rate": cons_result[1] / run_s,
        "lag_p50_ms": float(np.percentile(lags, 50) * 1000) if lags.size else float("nan"),
        "lag_p95_ms": float(np.percentile(lags, 95) * 1000) if lags.size else float("nan"),
        "lag_max_ms": float(lags.max() * 1000) if lags.size else float("nan"),
        "broker_cpu_pct": broker_cpu * 100,
        "broker_rss_mb": rss,
        "publisher_cpu_pct": sum(r[2] for r in pubs) * 100,
        "consumer_cpu_pct": cons_result[2] / (run_s + 1.0) * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, action="append", default=None,
                        help="boxes to simulate; repeat for several runs (default 100, 1000)")
    parser.add_argument("--machines", type=int, default=4, help="machines per box")
    parser.add_argument("--hop-s", type=float, default=1.0, help="the daemon's windows.hop_s")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2, help="publisher processes")
    parser.add_argument("--alarms-per-hour", type=float, default=1.0,
                        help="alarms per machine per hour (events and state changes)")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPU(s); broker: {find_mosquitto()}; {args.machines} machines "
          f"per box, hop {args.hop_s:g} s, {args.alarms_per_hour:g} alarm(s)/machine/hour")
    print("boxes machines  target/s  sent/s  received/s  lag p50/p95/max ms  broker CPU %  "
          "broker RSS MB  publishers CPU %  consumer CPU %")
    for boxes in args.boxes or [100, 1000]:
        r = simulate(boxes, args.machines, args.hop_s, args.seconds, args.procs,
                     args.alarms_per_hour, args.warmup_s)
        print(f"{r['boxes']:>5} {r['machines']:>8} {r['target_rate']:>9.0f} "
              f"{r['published_rate']:>7.0f} {r['received_rate']:>11.0f}  "
              f"{r['lag_p50_ms']:>6.1f}/{r['lag_p95_ms']:.1f}/{r['lag_max_ms']:.1f}"
              f"  {r['broker_cpu_pct']:>12.1f} {r['broker_rss_mb']:>14.1f} "
              f"{r['publisher_cpu_pct']:>17.1f} {r['consumer_cpu_pct']:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
