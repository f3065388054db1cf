"""Fault soak of alarm delivery: broker and daemon killed again and again, nothing lost.

A real mosquitto with persistence, the real `edge-monitor run` process replaying (as fast as
it goes, looped) a synthetic machine with a fault every few seconds of audio, so alarms
keep opening and closing, and a subscriber with a persistent session (clean_session false,
QoS 1) that records every event message it receives and, after each broker restart, comes
back later than the box does (so the broker must have kept its session and queued what the
box sent meanwhile). The broker runs the persistence settings of the shipped
conf/mosquitto/mosquitto.conf. Meanwhile the broker is restarted
`--broker-restarts` times, alternately by SIGKILL and SIGTERM, and the daemon is SIGKILLed
`--daemon-kills` times, each the moment its log shows an alarm `new` or `update` (so an
alarm is open), and started again. At the end the daemon is stopped cleanly once its
journal is empty, and the soak prints events emitted (the daemon's `alarm ... message ...`
log lines, written once the message is durable), delivered, lost, duplicated (by
`message_id`) and alarms left open (a `new` without an `end`). It exits 1 when a message
was lost or an alarm left open.

    .venv/bin/python tools/fault_soak.py --broker-restarts 20 --daemon-kills 10
    .venv/bin/python tools/fault_soak.py --broker-autosave-s 60   # what a timed save loses
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml

from edge_monitor.demo.local_broker import LocalMosquitto, free_port
from edge_monitor.demo.synth import (
    FAULT_KINDS,
    FaultSegment,
    MachineSpec,
    synthesize,
    write_audio,
)

RATE = 16000
DEVICE = "soak-box"
EVENTS = f"edge-monitor/{DEVICE}/machines/+/events"
EVENT_LINE = re.compile(r"machine \S+: alarm (new|update|end) (\S+) message ([0-9a-f-]{36})")
TYPE_RANK = {"new": 0, "update": 1, "end": 2}
LEARN_S = 10.0
WAIT_S = 60.0
AUDIO_S = 120.0
SHIPPED_BROKER = Path(__file__).resolve().parents[1] / "conf" / "mosquitto" / "mosquitto.conf"
PERSISTENCE_KEYS = ("autosave_interval", "autosave_on_changes", "max_queued_messages")


def shipped_persistence() -> list[str]:
    """The shipped broker's save settings, so the soak tests what production runs."""
    lines = [line.strip() for line in SHIPPED_BROKER.read_text().splitlines()]
    return [line for line in lines if line.split(" ", 1)[0] in PERSISTENCE_KEYS]


def persistent_broker(workdir: Path, port: int, persistence: list[str]) -> LocalMosquitto:
    """An anonymous loopback mosquitto that saves into `workdir` as `persistence` says."""
    return LocalMosquitto(workdir, [
        f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true",
        f"persistence_location {workdir}/", *persistence,
    ], [port])


def connect_client(port: int, client_id: str, clean: bool,
                   received: list[bytes] | None = None) -> paho.Client:
    """A connected MQTT 3.1.1 client; payloads it receives go to `received`."""
    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                         client_id=client_id, clean_session=clean, protocol=paho.MQTTv311)
    if received is not None:
        client.on_message = lambda c, u, message: received.append(message.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def positive(text: str) -> float:
    """argparse type: a number above zero."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above zero")
    return value


def ramped_faults(total_s: float, lead_s: float) -> list[FaultSegment]:
    """After `lead_s` of normal sound, faults that grow in four steps of 1.5 s (so each
    alarm has a `new` and `update`s) with 4 s of normal sound between them."""
    faults, start, n = [], lead_s, 0
    while start + 10.0 <= total_s:
        kind = FAULT_KINDS[n % len(FAULT_KINDS)]
        faults += [FaultSegment(kind, start + 1.5 * i, start + 1.5 * (i + 1), (i + 1) / 4)
                   for i in range(4)]
        start, n = start + 10.0, n + 1
    return faults


@dataclass(frozen=True)
class Profile:
    broker_restarts: int = 20
    daemon_kills: int = 10
    broker_up_s: tuple[float, float] = (1.0, 4.0)
    broker_down_s: tuple[float, float] = (0.2, 2.0)
    final_run_s: float = 5.0  # the last run, broker left alone, before its clean stop
    broker_autosave_s: float | None = None  # None: as the shipped conf; S: save every S s
    subscriber_reconnect_s: tuple[float, float] = (1.5, 3.0)  # paho's min and max delay
    seed: int = 12


@dataclass
class Report:
    emitted: Counter[str] = field(default_factory=Counter)
    alarms: int = 0
    deliveries: int = 0
    delivered: int = 0
    lost: list[str] = field(default_factory=list)
    unlogged: int = 0
    open_alarms: list[str] = field(default_factory=list)
    restart_ends: int = 0
    late_repeats: int = 0
    broker_kills: int = 0
    broker_terms: int = 0
    daemon_kills: int = 0
    kills_in_alarm: int = 0
    journal_backlog: int = 0
    journal_drops: int = 0
    client_restarts: int = 0
    wall_s: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.deliveries - self.delivered

    @property
    def ok(self) -> bool:
        return not self.lost and not self.open_alarms and self.journal_backlog == 0

    def lines(self) -> list[str]:
        e = self.emitted
        return [
            f"fault soak: {self.wall_s:.0f} s wall; broker restarts "
            f"{self.broker_kills + self.broker_terms} ({self.broker_kills} SIGKILL, "
            f"{self.broker_terms} SIGTERM); daemon SIGKILLs "
            f"{self.daemon_kills} ({self.kills_in_alarm} with an alarm open)",
            f"  events emitted {sum(e.values())} (new {e['new']}, update {e['update']}, end "
            f"{e['end']}, of which {self.restart_ends} end with reason restart) in {self.alarms} "
            "alarms",
            f"  delivered {self.delivered} distinct message_ids in {self.deliveries} deliveries: "
            f"lost {len(self.lost)}, duplicated {self.duplicates}, delivered without a log line "
            f"{self.unlogged} (SIGKILL between the journal commit and the log line)",
            f"  alarms left open (new without end) {len(self.open_alarms)}; repeats that came "
            f"after a later message of their alarm {self.late_repeats}",
            f"  journal backlog at the end {self.journal_backlog}, events dropped by the journal "
            f"bound {self.journal_drops}, MQTT client restarts by the health check "
            f"{self.client_restarts}",
        ]


class Subscriber:
    """A consumer with a persistent session that records every event message it gets."""

    def __init__(self, port: int, reconnect_s: tuple[float, float]) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id="fault-soak-subscriber", clean_session=False, protocol=paho.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(*reconnect_s)
        self._client.connect_async("127.0.0.1", port, keepalive=5)
        self._client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason_code: object, properties: object) -> None:
        client.subscribe(EVENTS, qos=1)  # also when the broker lost the session (SIGKILL)

    def _on_message(self, client: paho.Client, userdata: object,
                    message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(json.loads(message.payload))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def journal_backlog(state_dir: Path) -> int:
    path = state_dir / "mqtt-journal.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


class Soak:
    def __init__(self, workdir: Path, profile: Profile) -> None:
        self.workdir = workdir
        self.profile = profile
        self.rng = random.Random(profile.seed)
        self.report = Report()
        self.port = free_port()
        (workdir / "broker").mkdir()
        self.broker = persistent_broker(workdir / "broker", self.port, self.persistence())
        self.state_dir = workdir / "state"
        self.logs: list[Path] = []
        self._stop = threading.Event()
        self._broker_lock = threading.Lock()

    def persistence(self) -> list[str]:
        seconds = self.profile.broker_autosave_s
        if seconds is None:
            return shipped_persistence()
        return ["autosave_on_changes false", f"autosave_interval {seconds:g}"]

    def config(self) -> Path:
        audio = synthesize(MachineSpec(seed=5), AUDIO_S, RATE,
                           ramped_faults(AUDIO_S, lead_s=LEARN_S + 2.0))
        clip = write_audio(self.workdir / "machine.flac", audio, RATE)
        config = {
            "device_id": DEVICE,
            "state_dir": str(self.state_dir),
            "source": {"kind": "replay", "block_s": 0.05,
                       "replay": {"paths": [str(clip)], "realtime": False, "loop": True,
                                  "contiguous": True}},
            "machines": [{"name": "pump"}],
            "windows": {"window_s": 1.0, "hop_s": 0.5},
            "learning": {"seconds": LEARN_S},
            "decision": {"threshold_scale": 1.5, "k": 2, "n": 3, "cooldown_s": 0,
                         "update_interval_s": 1},
            "alarm_audio": {"enabled": False},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": self.port,
                     "reconnect_min_delay_s": 0.2, "reconnect_max_delay_s": 1.0,
                     "ha_discovery": False, "score_telemetry": False, "keepalive_s": 5},
            "logging": {"stats_interval_s": 5},
        }
        path = self.workdir / "edge.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_daemon(self, config: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.workdir / f"daemon-{len(self.logs):02d}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_monitor.cli", "run", "-c", str(config)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        return proc, log_path

    def broker_faults(self) -> None:
        p, r = self.profile, self.report
        while r.broker_kills + r.broker_terms < p.broker_restarts:
            if self._stop.wait(self.rng.uniform(*p.broker_up_s)):
                return
            with self._broker_lock:
                if (r.broker_kills + r.broker_terms) % 2 == 0:
                    self.broker.kill()
                    r.broker_kills += 1
                else:
                    self.broker.stop()
                    r.broker_terms += 1
                time.sleep(self.rng.uniform(*p.broker_down_s))
                self.broker.start()

    def kill_during_alarm(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        """SIGKILL the moment the log's newest alarm line is a `new` or `update`, after a
        random number (1 to 30) of alarm lines, so kills land anywhere in the replay."""
        deadline = time.monotonic() + WAIT_S
        due = self.rng.randint(1, 30)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited on its own; see {log_path}")
            found = EVENT_LINE.findall(log_path.read_text(errors="replace"))
            if len(found) >= due and found[-1][0] != "end":
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                final = EVENT_LINE.findall(log_path.read_text(errors="replace"))
                ended = {eid for kind, eid, _ in final if kind == "end"}
                self.report.daemon_kills += 1
                self.report.kills_in_alarm += any(
                    kind == "new" and eid not in ended for kind, eid, _ in final)
                return
            time.sleep(0.005)
        raise SystemExit(f"no open alarm within {WAIT_S:.0f} s; see {log_path}")

    def run(self) -> Report:
        started = time.monotonic()
        config = self.config()
        self.broker.start()
        subscriber = Subscriber(self.port, self.profile.subscriber_reconnect_s)
        faults = threading.Thread(target=self.broker_faults, name="broker-faults")
        proc = None
        try:
            for i in range(self.profile.daemon_kills):
                proc, log_path = self.start_daemon(config)
                self.kill_during_alarm(proc, log_path)
                if i == 0:
                    faults.start()  # the first run learned the bank undisturbed
            proc, log_path = self.start_daemon(config)
            faults.join()  # the broker's faults go on through the last run if need be
            self.stop_when_drained(proc, log_path)
            self.settle(subscriber)
        finally:
            self._stop.set()
            if faults.is_alive():
                faults.join()
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            subscriber.close()
            self.broker.stop()
        self.count(subscriber.snapshot())
        self.report.wall_s = time.monotonic() - started
        return self.report

    def stop_when_drained(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        """The last run, with the broker up: let it run, wait for its journal to empty,
        then SIGTERM (the clean stop ends an open alarm and flushes it)."""
        deadline = time.monotonic() + WAIT_S
        while "edge-monitor running" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the last run did not start; see {log_path}")
            time.sleep(0.05)
        time.sleep(self.profile.final_run_s)
        while journal_backlog(self.state_dir) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        if proc.wait(30) != 0:
            raise SystemExit(f"the daemon's clean stop exited {proc.returncode}; see {log_path}")
        self.report.journal_backlog = journal_backlog(self.state_dir)

    def emitted(self) -> list[tuple[str, str, str]]:
        return [hit for log in self.logs
                for hit in EVENT_LINE.findall(log.read_text(errors="replace"))]

    def settle(self, subscriber: Subscriber) -> None:
        """Give the subscriber time for what the broker still holds for it."""
        wanted = {mid for _, _, mid in self.emitted()}
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            if wanted <= {m["message_id"] for m in subscriber.snapshot()}:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates

    def count(self, received: list[dict[str, Any]]) -> None:
        r = self.report
        emitted = self.emitted()
        r.emitted = Counter(kind for kind, _, _ in emitted)
        r.alarms = len({eid for kind, eid, _ in emitted if kind == "new"})
        logs = "".join(log.read_text(errors="replace") for log in self.logs)
        r.restart_ends = logs.count("(reason restart")
        r.journal_drops = logs.count("DROPPED the oldest event")
        r.client_restarts = logs.count("MQTT client stopped making progress")
        r.deliveries = len(received)
        delivered = {m["message_id"] for m in received}
        r.delivered = len(delivered)
        logged = {mid for _, _, mid in emitted}
        r.lost = sorted(logged - delivered)
        r.unlogged = len(delivered - logged)
        ended = {m["event_id"] for m in received if m["type"] == "end"}
        r.open_alarms = sorted({m["event_id"] for m in received} - ended)
        rank: dict[str, int] = {}
        for m in received:
            best = rank.get(m["event_id"], -1)
            r.late_repeats += TYPE_RANK[m["type"]] < best
            rank[m["event_id"]] = max(best, TYPE_RANK[m["type"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-restarts", type=int, default=Profile.broker_restarts)
    parser.add_argument("--daemon-kills", type=int, default=Profile.daemon_kills)
    parser.add_argument("--seed", type=int, default=Profile.seed)
    parser.add_argument("--broker-autosave-s", type=positive, default=None,
                        help="save the broker every S seconds instead of on every change as "
                             "the shipped conf does (shows what a timed save loses)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    workdir = Path(tempfile.mkdtemp(prefix="fault-soak-"))
    profile = Profile(args.broker_restarts, args.daemon_kills, seed=args.seed,
                      broker_autosave_s=args.broker_autosave_s)
    soak = Soak(workdir, profile)
    print(f"broker saves: {', '.join(soak.persistence())}; the subscriber comes back "
          f"{profile.subscriber_reconnect_s[0]:g}-{profile.subscriber_reconnect_s[1]:g} s "
          "after each broker restart")
    report = soak.run()
    print("\n".join(report.lines()))
    for mid in report.lost[:10]:
        print(f"  lost: {mid}")
    for eid in report.open_alarms[:10]:
        print(f"  open: {eid}")
    if args.keep or not report.ok:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
