"""The fleet as the broker holds it: every box's retained availability, states and bundle.

Nothing is stored here: `collect` subscribes, takes the retained messages the broker sends
after the subscription, and stops once they have stopped coming. A site broker bridged to
a centre holds the same retained topics there, so one view covers a plant.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.mqtt.topics import ONLINE, fleet_filters, parse_fleet_topic

SETTLE_S = 0.5  # no retained message for this long after the subscription: all are in
CONNECT_TIMEOUT_S = 10.0


@dataclass
class Box:
    """One box as its retained topics describe it."""

    device: str
    online: bool | None = None
    bundle: dict[str, Any] | None = None
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def last_seen(self) -> str | None:
        """The newest time in its retained messages (a state change, a bundle report)."""
        times = [m.get("since") for m in self.machines.values()]
        times.append((self.bundle or {}).get("at"))
        found = [t for t in times if isinstance(t, str)]
        return max(found) if found else None

    def to_dict(self) -> dict[str, Any]:
        bundle = self.bundle or {}
        running = bundle.get("running") or {}
        return {
            "device": self.device,
            "online": self.online,
            "last_seen": self.last_seen,
            "bundle": {k: running.get(k) for k in ("version", "signer", "key_id", "origin")},
            "last_install": bundle.get("install"),
            "machines": [{"machine": name, **_machine(state)}
                         for name, state in sorted(self.machines.items())],
        }


def _machine(state: dict[str, Any]) -> dict[str, Any]:
    score, threshold = state.get("score"), state.get("threshold")
    ratio = score / threshold if isinstance(score, int | float) and isinstance(
        threshold, int | float) and threshold > 0 else None
    return {"status": state.get("status"), "ratio": ratio, "score": score,
            "threshold": threshold, "since": state.get("since"), "reason": state.get("reason")}


def _payload(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def collect(
    host: str,
    port: int = 1883,
    prefix: str = "edge-monitor",
    username: str | None = None,
    password: str | None = None,
    tls_ca_file: str | None = None,
    tls: bool = False,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> list[Box]:
    """Read the retained fleet topics once; boxes sorted by device id."""
    boxes: dict[str, Box] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    failed: list[str] = []
    last = [time.monotonic()]

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        if reason.is_failure:
            failed.append(f"broker refused the connection ({reason})")
            subscribed.set()
            return
        client.subscribe([(topic, 1) for topic in fleet_filters(prefix)])

    def on_subscribe(*args: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        parsed = parse_fleet_topic(prefix, message.topic)
        if parsed is None or not message.retain or not message.payload:
            return  # live updates and cleared topics are not the broker's retained view
        device, kind, machine = parsed
        with lock:
            last[0] = time.monotonic()
            box = boxes.setdefault(device, Box(device))
            if kind == "availability":
                box.online = message.payload.decode("utf-8", "replace") == ONLINE
            elif kind == "bundle":
                box.bundle = _payload(message.payload)
            elif machine is not None and (state := _payload(message.payload)) is not None:
                box.machines[machine] = state

    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                         client_id=f"edge-monitor-fleet-{time.time_ns()}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, \
        on_message
    if username:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=tls_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise EdgeMonitorError(f"cannot connect to the broker at {host}:{port} ({exc}); check "
                               "--broker and --port") from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout_s):
            raise EdgeMonitorError(f"the broker at {host}:{port} did not answer within "
                                   f"{timeout_s:.0f} s")
        if failed:
            raise EdgeMonitorError(f"{host}:{port}: {failed[0]}; check --username and the "
                                   "password")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                quiet = time.monotonic() - last[0]
            if quiet >= SETTLE_S:
                break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return [boxes[d] for d in sorted(boxes)]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(boxes: list[Box]) -> str:
    """One line per machine, the box's columns on each, for a terminal."""
    header = ("BOX", "ONLINE", "BUNDLE", "SIGNER", "LAST SEEN", "MACHINE", "STATE", "RATIO")
    rows = [header]
    for box in boxes:
        info = box.to_dict()
        bundle = info["bundle"]
        signer = f"{bundle['signer']} ({bundle['key_id']})" if bundle["signer"] else (
            "unverified" if bundle["origin"] in ("installed", "config") else "-")
        version = bundle["version"] or (bundle["origin"] or "-")
        online = {True: "online", False: "OFFLINE", None: "?"}[box.online]
        common = (box.device, online, version, signer, info["last_seen"] or "-")
        machines = info["machines"] or [{"machine": "-", "status": "-", "ratio": None}]
        for m in machines:
            rows.append((*common, m["machine"], str(m["status"]), _ratio(m["ratio"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
