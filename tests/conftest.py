"""Shared fixtures: a real mosquitto broker on a free loopback port, and a recording subscriber.

`mosquitto` is an anonymous broker; `mosquitto_auth` requires a password (users in
`broker.users`) and applies the production ACL shipped in conf/mosquitto/;
`mosquitto_factory(tls_files=(ca, cert, key))` adds a TLS listener on `broker.tls_port`.
Every broker offers `stop()` and `start()` on the same port, so a test can take it away and
bring it back.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_monitor.demo.local_broker import LocalMosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
ACL_EXAMPLE = REPO / "conf" / "mosquitto" / "edge-monitor.acl"
WAIT_S = 15.0

# Users of the password broker; the device user is named after the device id (see the ACL).
AUTH_DEVICE_ID = "test-box"
AUTH_USERS = {AUTH_DEVICE_ID: "device-secret", "ops": "ops-secret", "homeassistant": "ha-secret"}


class MosquittoBroker:
    """A mosquitto process owned by a test; `stop()` and `start()` keep the port."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        acl_file: Path | None = None,
        persistence: bool = False,
        tls_files: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = dict(users or {})
        self.tls_port = free_port() if tls_files else None
        lines = [f"listener {self.port} {self.host}", f"persistence {str(persistence).lower()}"]
        if persistence:
            lines.append(f"persistence_location {workdir}/")
        if self.users:
            passwd = workdir / "passwd"
            for i, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
                    check=True, capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        if tls_files is not None:  # a second listener that requires client certificates
            ca, cert, key = tls_files
            lines += [f"listener {self.tls_port} {self.host}", f"cafile {ca}",
                      f"certfile {cert}", f"keyfile {key}", "require_certificate true"]
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        self._process = LocalMosquitto(workdir, lines, ports, wait_s=WAIT_S, verbose=True)
        self.log_path = self._process.log_path

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def pid(self) -> int | None:
        """The broker process (for tests that pause it with SIGSTOP)."""
        return self._process.pid

    def start(self) -> None:
        """Start the broker and return once its ports accept connections."""
        self._process.start()

    def stop(self) -> None:
        """Stop gracefully (persistence is saved), or kill after 5 s."""
        self._process.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttRecorder:
    """A real subscriber that records what it receives; resubscribes after reconnects.

    `persistent=True` uses a durable session (clean_session false, QoS 1) so a broker
    with persistence queues messages for it while it is disconnected.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: list[str],
        username: str | None = None,
        persistent: bool = False,
    ) -> None:
        self.topics = topics
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{os.getpid()}-{id(self)}",
            clean_session=not persistent,
        )
        if username is not None:
            self.client.username_pw_set(username, broker.users[username])
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(WAIT_S):
            raise RuntimeError(f"recorder could not subscribe to {topics}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain), message.qos)
            )
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], what: str, timeout_s: float = WAIT_S
    ) -> list[Received]:
        """Wait until `predicate(messages)` holds; fail the test naming `what` otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout_s):
                seen = "\n".join(f"  {m.topic} {m.payload[:200]!r}" for m in self.messages)
                pytest.fail(f"timed out waiting for {what}; received:\n{seen}")
            return list(self.messages)

    def wait_topic(self, topic: str, count: int = 1, timeout_s: float = WAIT_S) -> list[Received]:
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= count,
                      f"{count} message(s) on {topic}", timeout_s)
        return self.on(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Make started brokers: `mosquitto_factory(users=..., acl_file=..., persistence=...)`."""
    brokers: list[MosquittoBroker] = []

    def make(**options: object) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker{len(brokers)}", **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """Anonymous broker, persistence off."""
    return mosquitto_factory()


@pytest.fixture
def mosquitto_auth(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """Password broker (users in `broker.users`) with the ACL from conf/mosquitto/."""
    return mosquitto_factory(users=AUTH_USERS, acl_file=ACL_EXAMPLE)


@pytest.fixture
def mqtt_recorder() -> Iterator[Callable[..., MqttRecorder]]:
    """Make recording subscribers: `mqtt_recorder(broker, ["edge-monitor/#"])`."""
    recorders: list[MqttRecorder] = []

    def make(broker: MosquittoBroker, topics: list[str], **options: object) -> MqttRecorder:
        recorder = MqttRecorder(broker, topics, **options)
        recorders.append(recorder)
        return recorder

    yield make
    for recorder in recorders:
        recorder.close()
