"""`edge-monitor demo`: the real pipeline on a synthetic machine, on a box with nothing but this.

What runs is the daemon itself (`edge_monitor.daemon.Daemon`) with a generated config: the
replay source plays a clip from `edge_monitor.demo.synth` (a normal stretch long enough for the
built-in model to learn the machine, then bearing, imbalance, rubbing and looseness faults
with normal stretches between), the default `logmel-stats` embedder learns its bank on
site, the decision state machine raises alarms, and the real `MqttClient` publishes them to
a private mosquitto on a free loopback port. A paho subscriber on `<prefix>/#` prints what
any consumer would receive, with a live score line, and a summary says, per injected fault,
whether an alarm was raised during it, and how many alarms came in normal stretches.

Times printed are audio time (seconds from the start of the clip). The replay runs as fast
as the box can process it unless `realtime` is set; `speed` paces the printing instead.
The daemon's timestamps are its source's timeline anchored at the first chunk, so audio
time = timestamp - anchor; the anchor comes from the first `normal` state (the state
directory is new, so that state ends learning), whose `since` is the end of the last
learned window.

Demo settings differ from the daemon's defaults on purpose, and say why:
- learning: 90 s instead of 300 s, so the demo fits in five minutes of audio;
- threshold_scale 1.5: the threshold is the 99th percentile of only nine leave-one-out
  scores (nine non-overlapping learned windows), that is their maximum, and the synthetic
  machine's slow wander puts later normal windows up to ~1.1x that maximum; faults score
  10x-100x above it, so 1.5x costs no detection;
- cooldown 5 s: faults come 25 s apart, the default 60 s cooldown would hide every second one.

With `web_port` (`edge-monitor demo --web`) the daemon also serves its web view on
127.0.0.1 (commands allowed: it is a private demo box) and, once the replay has ended and
the summary is printed, keeps it up (`source.replay.hold`) until Ctrl-C or `web_hold_s`.
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from edge_monitor.core.atomic import atomic_write_text
from edge_monitor.core.errors import BadInputError, EdgeMonitorError
from edge_monitor.demo.local_broker import LOOPBACK, LocalMosquitto, find_mosquitto, free_port
from edge_monitor.demo.synth import (
    FaultSegment,
    MachineSpec,
    demo_timeline,
    synthesize,
    write_audio,
    write_schedule_csv,
)
from edge_monitor.mqtt.topics import Message, TopicTree
from edge_monitor.pipeline.learning import MIN_LEARNING_WINDOWS
from edge_monitor.pipeline.processing import Processor

SAMPLE_RATE_HZ = 16000
DEVICE_ID = "demo-box"
MACHINE = "demo-pump"
PREFIX = "edge-monitor"
BROKERS = ("auto", "mosquitto", "none")
BROKER_WAIT_S = 10.0
SUBSCRIBE_WAIT_S = 10.0
DRAIN_WAIT_S = 5.0
POLL_S = 0.1
PAYLOAD_CHARS = 110
PLAIN_SCORE_EVERY_S = 10.0
HOLD_DRAIN_S = 1.0  # the replay has ended: its last messages are in flight for a moment


@dataclass(frozen=True)
class DemoSettings:
    """One demo run; the defaults are what `edge-monitor demo` runs."""

    seconds: float = 300.0
    learning_s: float = 90.0
    window_s: float = 10.0
    hop_s: float = 1.0
    fault_s: float = 20.0
    gap_s: float = 25.0
    tail_s: float = 30.0
    severity: float = 0.5
    seed: int = 0
    threshold_scale: float = 1.5
    k: int = 3
    n: int = 5
    cooldown_s: float = 5.0
    realtime: bool = False
    speed: float = 0.0
    broker: str = "auto"
    keep: Path | None = None
    web_port: int | None = None  # serve the web view on this loopback port
    web_hold_s: float | None = None  # keep it up this long after the replay; None: until Ctrl-C

    def __post_init__(self) -> None:
        if self.broker not in BROKERS:
            raise BadInputError(f"--broker {self.broker!r}: use one of {', '.join(BROKERS)}")
        if not math.isfinite(self.speed) or self.speed < 0:
            raise BadInputError(f"--speed {self.speed}: give a positive factor, or 0 for no pacing")
        if self.realtime and self.speed:
            raise BadInputError("--realtime and --speed exclude each other: pick one")
        if self.web_port is not None and not 1 <= self.web_port <= 65535:
            raise BadInputError(f"--web-port {self.web_port}: give a TCP port in 1..65535")
        if self.web_hold_s is not None and not (
            math.isfinite(self.web_hold_s) and self.web_hold_s >= 0
        ):
            raise BadInputError(f"--web-hold {self.web_hold_s}: give seconds >= 0")
        if self.learning_s < MIN_LEARNING_WINDOWS * self.window_s:
            raise BadInputError(
                f"learning of {self.learning_s:g} s is too short: the built-in model needs "
                f"{MIN_LEARNING_WINDOWS} windows of {self.window_s:g} s; give at least "
                f"{MIN_LEARNING_WINDOWS * self.window_s:g} s"
            )

    @property
    def learned_windows(self) -> int:
        """Windows the daemon's learner keeps (non-overlapping, none skipped in synthetic audio)."""
        return max(MIN_LEARNING_WINDOWS, math.ceil(self.learning_s / self.window_s - 1e-9))

    @property
    def learning_end_s(self) -> float:
        return self.learned_windows * self.window_s

    def schedule(self) -> list[FaultSegment]:
        """Normal for learning plus one gap, faults `gap_s` apart, `tail_s` normal at the end."""
        lead_s = self.learning_end_s + self.gap_s
        faults = demo_timeline(
            max(0.0, self.seconds - self.tail_s), lead_s=lead_s, fault_s=self.fault_s,
            gap_s=self.gap_s, severity=self.severity,
        )
        if not faults:
            need = lead_s + self.fault_s + self.tail_s
            raise BadInputError(
                f"--seconds {self.seconds:g} leaves no room for a fault after {lead_s:g} s of "
                f"learning and normal sound; give --seconds {math.ceil(need)} or more"
            )
        return faults


# The broker ------------------------------------------------------------------------------


def private_mosquitto(executable: str, workdir: Path) -> LocalMosquitto:
    """An anonymous mosquitto on a free loopback port, gone when stopped."""
    port = free_port()
    lines = [f"listener {port} {LOOPBACK}", "allow_anonymous true", "persistence false"]
    return LocalMosquitto(workdir, lines, [port], executable, BROKER_WAIT_S)


# What a subscriber sees ------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


class Subscriber:
    """A paho client on `<prefix>/#` (and the Home Assistant discovery topics)."""

    def __init__(self, host: str, port: int, topics: list[str], inbox: queue.Queue[Received]):
        import paho.mqtt.client as paho

        self._inbox = inbox
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"edge-monitor-demo-{free_port()}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(SUBSCRIBE_WAIT_S):
            self.stop()
            raise EdgeMonitorError(f"the demo subscriber could not subscribe on {host}:{port}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put(Received(message.topic, bytes(message.payload)))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LocalPublisher:
    """Without a broker: the processing loop's publications, as the MQTT client would send them."""

    def __init__(self, topics: TopicTree, inbox: queue.Queue[Received]) -> None:
        self.topics = topics
        self._inbox = inbox

    def send(self, message: Message, kind: str | None, label: str) -> None:
        self._inbox.put(Received(message.topic, message.payload))


# Results ---------------------------------------------------------------------------------


@dataclass
class Alarm:
    event_id: str
    start_s: float
    end_s: float | None = None
    peak_score: float = 0.0


@dataclass
class FaultResult:
    fault: FaultSegment
    alarm: Alarm | None
    peak_ratio: float | None  # highest score / threshold of the windows hearing the fault


@dataclass
class DemoResult:
    """What the subscriber saw, judged against the injected schedule."""

    faults: list[FaultResult]
    false_alarms: list[Alarm]
    normal_windows: int
    normal_windows_above: int
    max_normal_ratio: float | None
    scores: list[tuple[float, float, float]] = field(default_factory=list)  # (t, score, thr)
    alarms: list[Alarm] = field(default_factory=list)
    threshold: float | None = None
    daemon_exit: int = 0

    @property
    def detected(self) -> int:
        return sum(r.alarm is not None for r in self.faults)

    @property
    def ok(self) -> bool:
        return self.detected == len(self.faults) and not self.false_alarms


def hears(fault: FaultSegment, window_end_s: float, window_s: float) -> bool:
    """Whether the window ending at `window_end_s` contains audio of the fault."""
    return fault.start_s < window_end_s and window_end_s - window_s < fault.end_s


def judge(
    schedule: list[FaultSegment], alarms: list[Alarm], scores: list[tuple[float, float, float]],
    settings: DemoSettings,
) -> DemoResult:
    """Match alarms to faults: an alarm belongs to a fault when the window that raised it
    (or one of the k-of-n history behind it) heard the fault."""
    slack = settings.n * settings.hop_s
    faults = []
    used: set[str] = set()
    for fault in schedule:
        match = next((a for a in alarms if a.event_id not in used
                      and fault.start_s < a.start_s <= fault.end_s + settings.window_s + slack),
                     None)
        if match is not None:
            used.add(match.event_id)
        ratios = [s / t for end, s, t in scores if hears(fault, end, settings.window_s)]
        faults.append(FaultResult(fault, match, max(ratios) if ratios else None))
    false_alarms = [a for a in alarms if a.event_id not in used and not any(
        f.start_s < a.start_s <= f.end_s + settings.window_s + slack for f in schedule)]
    normal = [s / t for end, s, t in scores
              if not any(hears(f, end, settings.window_s) for f in schedule)]
    return DemoResult(
        faults=faults, false_alarms=false_alarms, normal_windows=len(normal),
        normal_windows_above=sum(r > 1.0 for r in normal),
        max_normal_ratio=max(normal) if normal else None, scores=scores, alarms=alarms,
        threshold=scores[-1][2] if scores else None,
    )


# Printing --------------------------------------------------------------------------------


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


ABRIDGED_KEYS = ("event_id", "message_id", "machine", "started_at", "updated_at", "ended_at",
                 "since", "model_version", "bank_version")


def abridge(body: dict[str, Any]) -> str:
    """`key=value` of a JSON payload without ids and timestamps (the line shows audio time)."""
    parts = []
    for key, value in body.items():
        if key in ABRIDGED_KEYS or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.5f}"
        elif key == "clip_path":
            value = Path(value).name
        parts.append(f"{key}={value}")
    return " ".join(parts)


class Printer:
    """Turns received messages into lines: audio times, short payloads, a live score line."""

    def __init__(self, settings: DemoSettings, schedule: list[FaultSegment], tree: TopicTree,
                 out: TextIO) -> None:
        self.settings = settings
        self.schedule = schedule
        self.tree = tree
        self.out = out
        self.live = out.isatty()
        self.anchor: float | None = None  # epoch seconds of audio time 0
        self.scores: list[tuple[float, float, float]] = []
        self.alarms: dict[str, Alarm] = {}
        self.offline = False
        self._pending: list[Received] = []
        self._last_status = ""
        self._live_line = False
        self._last_plain_score_s = -math.inf
        self._wall_start = time.monotonic()

    def audio_s(self, text: str | None) -> float | None:
        moment = _parse_time(text)
        if moment is None or self.anchor is None:
            return None
        return moment.timestamp() - self.anchor

    def feed(self, msg: Received) -> None:
        if self.anchor is None and msg.topic == self.tree.score(MACHINE):
            self._pending.append(msg)  # printed once learning's end gives the anchor
            return
        self._show(msg)
        if self.anchor is not None and self._pending:
            pending, self._pending = self._pending, []
            for held in pending:
                self._show(held)

    def _show(self, msg: Received) -> None:
        topic = msg.topic
        if topic == self.tree.score(MACHINE):
            self._score(json.loads(msg.payload))
            return
        text = msg.payload.decode("utf-8", errors="replace")
        when = None
        if topic == self.tree.state(MACHINE) and text:
            body = json.loads(text)
            if body["status"] == "normal" and self.anchor is None:
                # The state dir is new, so the first `normal` is the end of learning.
                since = _parse_time(body["since"])
                assert since is not None
                self.anchor = since.timestamp() - self.settings.learning_end_s
            self._last_status = body["status"]
            when = self.audio_s(body.get("since"))
        elif topic == self.tree.events(MACHINE):
            body = json.loads(text)
            when = self._event(body)
        elif topic == self.tree.availability:
            self.offline = text == "offline"
        if topic.startswith(self.tree.ha_prefix + "/"):
            text = f"(Home Assistant discovery config, {len(msg.payload)} bytes)"
        elif text.startswith("{"):
            text = abridge(json.loads(text))
        if len(text) > PAYLOAD_CHARS:
            text = text[: PAYLOAD_CHARS - 3] + "..."
        stamp = f"{when:6.1f} s" if when is not None else "   --   "
        self.note(f"[{stamp}] {topic}  {text}")

    def _event(self, body: dict) -> float | None:
        event_id = body["event_id"]
        start = self.audio_s(body["started_at"])
        if start is None:
            return None
        alarm = self.alarms.setdefault(event_id, Alarm(event_id, start))
        alarm.peak_score = max(alarm.peak_score, body.get("peak_score") or 0.0)
        if body["type"] == "end":
            alarm.end_s = self.audio_s(body["ended_at"])
            return alarm.end_s
        return self.audio_s(body["updated_at"])

    def _score(self, body: dict) -> None:
        t = self.audio_s(body["at"])
        score, threshold = body.get("score"), body.get("threshold")
        if t is None or score is None or threshold is None:
            return
        self.scores.append((t, score, threshold))
        self._pace(t)
        active = [f.kind for f in self.schedule if hears(f, t, self.settings.window_s)]
        ratio = score / threshold
        bar = "#" * min(20, round(ratio * 5))
        heard = "+".join(active) or "normal"
        line = (f"  t {t:6.1f} s  {self._last_status:<8} score {score:.5f}  thr {threshold:.5f}"
                f"  x{ratio:6.2f}  audio {heard:<10} {bar}").rstrip()
        if self.live:  # one updating line: it must not wrap
            width = shutil.get_terminal_size().columns
            self.out.write("\r" + line[: max(20, width - 1)] + "\x1b[K")
            self.out.flush()
            self._live_line = True
        elif t - self._last_plain_score_s >= PLAIN_SCORE_EVERY_S:
            self._last_plain_score_s = t
            self.note(line)

    def _pace(self, t: float) -> None:
        if self.settings.speed > 0:
            due = self._wall_start + t / self.settings.speed
            time.sleep(max(0.0, due - time.monotonic()))

    def note(self, text: str) -> None:
        """Print a whole line (clearing the live score line first)."""
        if self._live_line:
            self.out.write("\r\x1b[K")
            self._live_line = False
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        for held in self._pending:
            self._show(held)
        self._pending = []
        if self._live_line:
            self.out.write("\n")
            self._live_line = False


def print_summary(result: DemoResult, settings: DemoSettings, out: TextIO) -> None:
    w = out.write
    w("\nSummary (audio time; an alarm counts for a fault when a window that heard it raised "
      "it)\n")
    w(f"  {'fault':<10} {'from':>7} {'to':>7}  {'alarm':<5} {'raised at':>9} "
      f"{'after':>7}  {'peak score/threshold':>20}\n")
    for r in result.faults:
        f = r.fault
        peak = f"{r.peak_ratio:.1f}" if r.peak_ratio is not None else "no windows"
        if r.alarm is not None:
            w(f"  {f.kind:<10} {f.start_s:7.1f} {f.end_s:7.1f}  {'yes':<5} "
              f"{r.alarm.start_s:7.1f} s {r.alarm.start_s - f.start_s:5.1f} s  {peak:>20}\n")
        else:
            w(f"  {f.kind:<10} {f.start_s:7.1f} {f.end_s:7.1f}  {'NO':<5} {'':>9} {'':>7}  "
              f"{peak:>20}\n")
    worst = (f"; highest score/threshold {result.max_normal_ratio:.2f}"
             if result.max_normal_ratio is not None else "")
    w(f"  normal stretches: {len(result.false_alarms)} false alarm(s); "
      f"{result.normal_windows_above} of {result.normal_windows} windows that heard no fault "
      f"were above the threshold{worst} (an alarm needs {settings.k} of {settings.n})\n")
    for a in result.false_alarms:
        w(f"    false alarm at {a.start_s:.1f} s (peak {a.peak_score:.5f})\n")
    verdict = "every injected fault raised an alarm and no normal stretch did" if result.ok \
        else f"{result.detected} of {len(result.faults)} faults raised an alarm, " \
             f"{len(result.false_alarms)} false alarm(s)"
    w(f"Result: {verdict}.\n")


def write_results(workdir: Path, result: DemoResult, schedule: list[FaultSegment],
                  settings: DemoSettings) -> None:
    """scores.csv (one row per scored window) and alarms.csv, for plotting or a spreadsheet."""
    rows = ["end_s,score,threshold,audio"]
    for end, score, threshold in result.scores:
        heard = "+".join(f.kind for f in schedule if hears(f, end, settings.window_s))
        rows.append(f"{end:.3f},{score:.6g},{threshold:.6g},{heard or 'normal'}")
    atomic_write_text(workdir / "scores.csv", "\n".join(rows) + "\n")
    rows = ["start_s,end_s,peak_score"]
    for a in result.alarms:
        end = f"{a.end_s:.3f}" if a.end_s is not None else ""
        rows.append(f"{a.start_s:.3f},{end},{a.peak_score:.6g}")
    atomic_write_text(workdir / "alarms.csv", "\n".join(rows) + "\n")


# The run ---------------------------------------------------------------------------------


def demo_config(settings: DemoSettings, workdir: Path, audio: Path,
                broker: tuple[str, int] | None) -> dict:
    """The daemon config the demo runs: the daemon's defaults except where the docstring says."""
    mqtt: dict = {"enabled": False}
    if broker is not None:
        mqtt = {"enabled": True, "host": broker[0], "port": broker[1], "prefix": PREFIX,
                "device_name": "edge-monitor demo", "reconnect_min_delay_s": 0.5,
                "reconnect_max_delay_s": 2.0,
                "score_interval_s": 0}  # every window: the demo draws the score timeline
    web = {"enabled": False}
    if settings.web_port is not None:
        web = {"enabled": True, "host": LOOPBACK, "port": settings.web_port,
               "commands_enabled": True}
    return {
        "device_id": DEVICE_ID,
        "state_dir": str(workdir / "state"),
        "source": {"kind": "replay", "replay": {"paths": [str(audio)],
                                                "realtime": settings.realtime,
                                                "contiguous": True,
                                                "hold": settings.web_port is not None}},
        "machines": [{"name": MACHINE}],
        "windows": {"window_s": settings.window_s, "hop_s": settings.hop_s},
        "learning": {"seconds": settings.learning_s},
        "decision": {"threshold_scale": settings.threshold_scale, "k": settings.k,
                     "n": settings.n, "cooldown_s": settings.cooldown_s},
        # Decoding the whole clip before the first chunk can take seconds on a busy box;
        # that is not a lost microphone.
        "faults": {"no_audio_s": 5.0 if settings.realtime else 60.0},
        "mqtt": mqtt,
        "web": web,
        "logging": {"level": "ERROR"},
    }


class _DaemonThread:
    """The daemon on a worker thread; the main thread prints and handles Ctrl-C."""

    def __init__(self, config_path: Path) -> None:
        from edge_monitor.daemon import Daemon

        self.daemon = Daemon(config_path)
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="demo-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:  # re-raised on the main thread
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def replayed(self) -> bool:
        """The processing loop has run through the whole clip."""
        processor = self.daemon.processor
        return processor is not None and processor.finished.is_set()

    def when_processing(self, fn: Callable[[Processor], Future[Any]]) -> None:
        """Call `fn` with the processing loop as soon as it runs, and wait for what it asked."""
        while self.thread.is_alive():
            processor = self.daemon.processor
            if processor is not None and processor.alive:
                fn(processor).result(BROKER_WAIT_S)
                return
            time.sleep(0.01)


def run_demo(settings: DemoSettings, out: TextIO = sys.stdout) -> DemoResult:
    """Synthesise, start a broker, run the daemon on the clip, print, judge; see the module doc."""
    workdir = settings.keep or Path(tempfile.mkdtemp(prefix="edge-monitor-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker: LocalMosquitto | None = None
    subscriber: Subscriber | None = None
    try:
        schedule = settings.schedule()
        audio_path = workdir / "machine.flac"
        out.write(f"edge-monitor demo: {settings.seconds:g} s of a synthetic rotating machine "
                  f"(shaft {MachineSpec.shaft_hz} Hz, {SAMPLE_RATE_HZ} Hz audio), faults at "
                  f"severity {settings.severity:g}:\n")
        for f in schedule:
            out.write(f"  {f.start_s:6.1f} - {f.end_s:6.1f} s  {f.kind}\n")
        out.write("  every other stretch is the normal machine\n")
        out.flush()
        audio = synthesize(MachineSpec(seed=settings.seed), settings.seconds, SAMPLE_RATE_HZ,
                           schedule)
        write_audio(audio_path, audio, SAMPLE_RATE_HZ)
        write_schedule_csv(workdir / "schedule.csv", schedule, settings.seconds)
        del audio

        inbox: queue.Queue[Received] = queue.Queue()
        tree = TopicTree(DEVICE_ID, PREFIX)
        broker, where = _start_broker(settings.broker, workdir)
        out.write(f"broker: {where}\n")
        if broker is not None:
            subscriber = Subscriber(broker.host, broker.port,
                                    [f"{PREFIX}/#", f"{tree.ha_prefix}/#"], inbox)
            out.write(f"subscriber: paho on {PREFIX}/# and {tree.ha_prefix}/# prints what it "
                      "receives (ids and timestamps left out; [t] is audio time)\n")
        config = demo_config(settings, workdir, audio_path,
                             (broker.host, broker.port) if broker else None)
        config_path = workdir / "edge-monitor.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        pace = "real time" if settings.realtime else "as fast as this box can (lossless)"
        out.write(f"daemon: edge-monitor run -c {config_path}  (replay {pace}; built-in "
                  f"logmel-stats model learns the first {settings.learning_end_s:g} s; "
                  f"{settings.window_s:g} s windows every {settings.hop_s:g} s; threshold x"
                  f"{settings.threshold_scale:g}, alarm on {settings.k} of {settings.n})\n")
        if settings.web_port is not None:
            out.write(f"web view: http://{LOOPBACK}:{settings.web_port}/\n")
        out.write("\n")
        out.flush()
        printer = Printer(settings, schedule, tree, out)
        daemon = _DaemonThread(config_path)
        daemon.start()
        if broker is None:
            local = LocalPublisher(tree, inbox)
            daemon.when_processing(lambda processor: processor.set_publisher(local))
        _pump(daemon, inbox, printer, broker is not None, settings.web_port is not None)
        printer.finish()
        if daemon.error is not None:
            raise daemon.error
        alarms = sorted(printer.alarms.values(), key=lambda a: a.start_s)
        result = judge(schedule, alarms, printer.scores, settings)
        result.daemon_exit = daemon.rc if daemon.rc is not None else 1
        print_summary(result, settings, out)
        if settings.keep:
            write_results(workdir, result, schedule, settings)
            out.write(f"kept: {workdir} (machine.flac, schedule.csv, scores.csv, alarms.csv, "
                      "the config, state/ with the learned bank and alarm clips)\n")
        if settings.web_port is not None:
            _hold_web(daemon, settings, out)
            if daemon.error is not None:
                raise daemon.error
            result.daemon_exit = daemon.rc if daemon.rc is not None else 1
        return result
    finally:
        if subscriber is not None:
            subscriber.stop()
        if broker is not None:
            broker.stop()
        if settings.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _start_broker(choice: str, workdir: Path) -> tuple[LocalMosquitto | None, str]:
    if choice == "none":
        return None, "none (--broker none): printing what the daemon hands its MQTT client"
    executable = find_mosquitto()
    if executable is None:
        if choice == "mosquitto":
            raise EdgeMonitorError(
                "--broker mosquitto: mosquitto is not installed; install it "
                "(apt-get install mosquitto, or bash tools/setup.sh as root)"
            )
        return None, ("none: mosquitto is not installed (apt-get install mosquitto, or bash "
                      "tools/setup.sh as root), so the demo prints what the daemon hands its "
                      "MQTT client instead of what a subscriber receives")
    broker = private_mosquitto(executable, workdir)
    broker.start()
    return broker, (f"private mosquitto ({executable}) on {broker.host}:{broker.port}, "
                    "stopped at the end")


def _pump(daemon: _DaemonThread, inbox: queue.Queue[Received], printer: Printer,
          via_broker: bool, holding: bool = False) -> None:
    """Print messages until the daemon has stopped and the subscriber has seen `offline`;
    `holding` (the web view stays up): until the replay has ended and its last messages
    are in."""
    try:
        while daemon.thread.is_alive() and not (holding and daemon.replayed()):
            _drain(inbox, printer, POLL_S)
    except KeyboardInterrupt:
        printer.note("interrupted: stopping the daemon")
        daemon.daemon.request_stop()
        daemon.thread.join()
    deadline = time.monotonic() + (HOLD_DRAIN_S if holding else DRAIN_WAIT_S)
    while time.monotonic() < deadline and not (printer.offline or not via_broker):
        _drain(inbox, printer, POLL_S)
    _drain(inbox, printer, 0.0)


def _hold_web(daemon: _DaemonThread, settings: DemoSettings, out: TextIO) -> None:
    """Keep the daemon (and so its web view) up after the replay, then stop it."""
    hold = settings.web_hold_s
    url = f"http://{LOOPBACK}:{settings.web_port}/"
    out.write(f"web view: {url} stays up "
              f"{'until Ctrl-C' if hold is None else f'for {hold:g} s (or until Ctrl-C)'}\n")
    out.flush()
    deadline = None if hold is None else time.monotonic() + hold
    try:
        while daemon.thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(POLL_S)  # not join(): a Ctrl-C inside Thread.join can break the join
    except KeyboardInterrupt:
        out.write("stopping the daemon\n")
    daemon.daemon.request_stop()
    daemon.thread.join()


def _drain(inbox: queue.Queue[Received], printer: Printer, wait_s: float) -> None:
    try:
        msg = inbox.get(timeout=wait_s) if wait_s > 0 else inbox.get_nowait()
    except queue.Empty:
        return
    printer.feed(msg)
    while True:
        try:
            printer.feed(inbox.get_nowait())
        except queue.Empty:
            return
