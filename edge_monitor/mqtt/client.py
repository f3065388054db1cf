"""The daemon's MQTT connection: availability, state, alarm events, telemetry, commands.

Callers never wait on the network: `publish_event` and `publish_state` only put the
message on an in-memory queue. A worker thread writes it to the on-disk journal first and
then hands it to paho, at most `max_inflight` at a time, in journal order; paho's PUBACK
(`on_publish`) removes it from the journal. While the broker is away messages sit in the
journal; on (re)connect — also after a daemon restart — the backlog goes out in order.
paho itself resends what it had in flight when a connection drops, so the worker only
hands each journal row to paho once per process.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_monitor.config.sections import MqttSection
from edge_monitor.core.errors import ConfigError
from edge_monitor.mqtt.commands import CommandRouter
from edge_monitor.mqtt.journal import KIND_EVENT, KIND_STATE, Journal
from edge_monitor.mqtt.topics import (
    QOS_RELIABLE,
    AlarmEvent,
    BundleStatus,
    CommandReply,
    MachineState,
    Message,
    ScoreSample,
    TopicTree,
    check_segment,
)

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 10_000  # messages waiting for the journal (memory bound if the disk stalls)
COMMAND_QUEUE_SIZE = 8  # commands waiting for the command worker
_STOP = object()
_WAKE = object()


@dataclass(frozen=True)
class MqttStats:
    connected: bool
    backlog: int
    in_flight: int
    dropped_events: int
    last_error: str | None


@dataclass(frozen=True)
class _Outgoing:
    message: Message
    kind: str
    label: str


@dataclass(frozen=True)
class _Ack:
    mid: int


class MqttClient:
    """One connection to the broker, owned by the daemon: `start()`, publish, `stop()`."""

    def __init__(
        self, settings: MqttSection, device_id: str, journal_path: Path,
        machines: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.journal_path = journal_path
        self.topics = TopicTree(device_id, settings.prefix, settings.ha_prefix)
        self.commands = CommandRouter(
            settings.commands_enabled, settings.commands_allowed, COMMAND_QUEUE_SIZE
        )
        self._machines = tuple(check_segment(m, "machine") for m in machines)
        self._inbox: queue.Queue[object] = queue.Queue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._overflow_drops = 0
        self._connected = threading.Event()
        self._inflight: dict[int, int] = {}
        self._last_handed = 0
        self._last_error: str | None = None
        self._journal: Journal | None = None
        self._paho: paho.Client | None = None
        self._worker: threading.Thread | None = None
        self._stopped = False
        self._successor: MqttClient | None = None
        self._prepared: paho.Client | None = None

    # Lifecycle ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Read the password and load the TLS files now (ConfigError when they are bad), so
        a reload can find out before it stops the client this one replaces."""
        self._prepared = self._new_paho()

    def start(self) -> None:
        """Open the journal and connect in the background; returns at once."""
        if self._paho is not None:
            raise RuntimeError("MqttClient.start() called twice; stop() it first")
        s = self.settings
        client, self._prepared = self._prepared or self._new_paho(), None
        self._journal = Journal(self.journal_path, s.journal_max_events)
        self._inflight.clear()
        self._last_handed = 0  # hand the whole backlog to this connection, oldest first
        self._stopped = False
        self._paho = client
        self.commands.start()
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()
        client.connect_async(s.host, s.port, s.keepalive_s)
        client.loop_start()
        log.info("MQTT connecting to %s:%d as %s", s.host, s.port, self.topics.root)

    def _new_paho(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=s.client_id or f"edge-monitor-{self.device_id}",
            protocol=paho.MQTTv311,
        )
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(s.reconnect_min_delay_s, s.reconnect_max_delay_s)
        will = self.topics.availability_message(online=False)
        client.will_set(will.topic, will.payload, will.qos, will.retain)
        if s.username:
            client.username_pw_set(s.username, s.password())
        if s.tls:
            self._configure_tls(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _configure_tls(self, client: paho.Client) -> None:
        s = self.settings
        try:
            client.tls_set(
                ca_certs=str(s.tls_ca_file) if s.tls_ca_file else None,
                certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
                keyfile=str(s.tls_key_file) if s.tls_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt TLS files cannot be loaded ({exc}): check tls_ca_file, tls_cert_file "
                "and tls_key_file are PEM files and the key matches the certificate"
            ) from exc
        client.tls_insecure_set(s.tls_insecure)

    def hand_over(self, successor: MqttClient | None) -> None:
        """A reload replaces this client: take no more commands, and send the replies of
        those still running (the `reload` that asked for this) through `successor`'s
        connection, on this client's reply topic where the requester listens. Then `stop()`
        this client and start the successor."""
        self._successor = successor
        self.commands.stop(wait=False)

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Deliver what can be delivered within the timeout, say `offline`, disconnect."""
        client, journal = self._paho, self._journal
        if client is None or journal is None:
            return
        if self._connected.is_set():
            self.flush(flush_timeout_s)
        self.commands.stop()
        if self._connected.is_set():
            offline = self.topics.availability_message(online=False)
            info = client.publish(offline.topic, offline.payload, offline.qos, offline.retain)
            try:
                info.wait_for_publish(flush_timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish 'offline' before disconnecting: %s", exc)
        client.disconnect()
        client.loop_stop()
        with self._queued_lock:  # nothing can be queued behind the stop marker
            self._stopped = True
            self._inbox.put(_STOP)
        if self._worker is not None:
            self._worker.join()
        backlog = journal.count()
        journal.close()
        self._paho = self._journal = self._worker = None
        log.info("MQTT stopped; %d undelivered messages stay in %s", backlog, journal.path)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far was acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self._idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _idle(self) -> bool:
        with self._queued_lock:
            queued = self._queued
        return queued == 0 and self._journal is not None and self._journal.count() == 0

    # Publishing (any thread; never blocks on the network) ---------------------------

    def publish_event(self, event: AlarmEvent) -> None:
        label = f"{event.type} {event.event_id} ({event.message_id})"
        self._enqueue(_Outgoing(self.topics.event_message(event), KIND_EVENT, label))

    def publish_state(self, machine: str, state: MachineState) -> None:
        self._enqueue(_Outgoing(self.topics.state_message(machine, state), KIND_STATE, machine))

    def publish_bundle(self, status: BundleStatus) -> None:
        """The retained `bundle` topic: through the journal, like state."""
        self._enqueue(_Outgoing(self.topics.bundle_message(status), KIND_STATE, "bundle"))

    def publish_score(self, machine: str, sample: ScoreSample) -> None:
        """Telemetry is dropped while disconnected: the next window brings a fresh one."""
        message = self.topics.score_message(machine, sample)
        client = self._paho
        if client is not None and self._connected.is_set():
            client.publish(message.topic, message.payload, message.qos, message.retain)

    def set_machines(self, machines: Iterable[str]) -> None:
        """Change the monitored machines (after a reload): clear the retained state of
        removed machines (through the journal, so it follows any state still queued) and
        update Home Assistant discovery."""
        new = tuple(check_segment(m, "machine") for m in machines)
        removed = [m for m in self._machines if m not in new]
        self._machines = new
        for machine in removed:
            self._enqueue(_Outgoing(self.topics.state_clear_message(machine), KIND_STATE, machine))
        if self.settings.ha_discovery and self._connected.is_set():
            self._send_direct(self.topics.discovery_removal_messages(removed))
            self._send_direct(self.topics.discovery_messages(new, self.settings.device_name))

    def _enqueue(self, item: _Outgoing) -> None:
        """Queue for the worker; before `start()` messages wait, after `stop()` they cannot."""
        with self._queued_lock:
            if self._stopped:
                log.error("MQTT client is stopped: DROPPED %s on %s", item.label,
                          item.message.topic)
                return
            if self._queued >= MAX_QUEUED_MESSAGES:
                self._overflow_drops += 1
                log.error(
                    "MQTT outbox queue is full (%d waiting for the journal): DROPPED %s on %s",
                    self._queued, item.label, item.message.topic,
                )
                return
            self._queued += 1
            self._inbox.put(item)

    def stats(self) -> MqttStats:
        journal = self._journal
        return MqttStats(
            connected=self._connected.is_set(),
            backlog=journal.count() if journal is not None else 0,
            in_flight=len(self._inflight),
            dropped_events=self._overflow_drops + (journal.dropped_events if journal else 0),
            last_error=self._last_error,
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # Worker thread: journal first, then paho -----------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._inbox.get()]
            while not self._inbox.empty():  # take the whole burst: one journal transaction
                items.append(self._inbox.get_nowait())
            stopping = _STOP in items
            try:
                self._store([i for i in items if isinstance(i, _Outgoing)])
                acked = [self._inflight.pop(i.mid, None) for i in items if isinstance(i, _Ack)]
                if self._journal is not None and any(acked):
                    self._journal.remove(seq for seq in acked if seq is not None)
                self._pump()
            except (sqlite3.Error, OSError) as exc:  # keep delivering once the disk recovers
                self._last_error = f"MQTT journal {self.journal_path} failed: {exc}"
                log.error("%s; messages already journaled are kept and sent later",
                          self._last_error)

    def _store(self, items: list[_Outgoing]) -> None:
        if not items:
            return
        try:
            if self._journal is not None:  # set for the worker's whole life
                self._journal.append([(i.message, i.kind, i.label) for i in items])
        except (sqlite3.Error, OSError) as exc:  # disk full: still try to deliver from memory
            log.error("cannot write %d message(s) to the MQTT journal (%s): publishing them "
                      "without durability; free disk space or fix %s", len(items), exc,
                      self.journal_path)
            self._send_direct([i.message for i in items])
        finally:
            with self._queued_lock:
                self._queued -= len(items)

    def _pump(self) -> None:
        client, journal = self._paho, self._journal
        while client is not None and journal is not None and self._connected.is_set():
            room = self.settings.max_inflight - len(self._inflight)
            entries = journal.pending(self._last_handed, room) if room > 0 else []
            if not entries:
                return
            for entry in entries:
                m = entry.message
                info = client.publish(m.topic, m.payload, m.qos, m.retain)
                self._last_handed = entry.seq
                if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    self._inflight[info.mid] = entry.seq
                else:
                    log.error("paho refused %s on %s (%s); it stays in the journal until restart",
                              entry.label, m.topic, paho.error_string(info.rc))

    def _send_direct(self, messages: Iterable[Message]) -> None:
        client = self._paho
        for m in messages:
            if client is None:
                log.warning("MQTT client is stopped: %s not published", m.topic)
                continue
            client.publish(m.topic, m.payload, m.qos, m.retain)

    # paho callbacks (network thread) -------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
        reason_code: ReasonCode, properties: Properties | None,
    ) -> None:
        s = self.settings
        if reason_code.is_failure:
            self._last_error = f"broker refused the connection: {reason_code}"
            log.error("MQTT broker %s:%d refused the connection (%s): check mqtt.username, "
                      "the password and the broker's ACL", s.host, s.port, reason_code)
            return
        self._last_error = None
        log.info("MQTT connected to %s:%d", s.host, s.port)
        subscriptions = [(self.topics.command_filter, QOS_RELIABLE)]
        if s.ha_discovery:
            subscriptions.append((self.topics.ha_status, QOS_RELIABLE))
        client.subscribe(subscriptions)
        self._send_direct([self.topics.availability_message(online=True)])
        if s.ha_discovery:
            self._send_direct(self.topics.discovery_messages(self._machines, s.device_name))
        self._connected.set()
        self._inbox.put(_WAKE)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        s = self.settings
        hint = "; or the TLS handshake failed: check mqtt.tls_* files" if s.tls else ""
        self._last_error = f"cannot connect to the broker at {s.host}:{s.port}{hint}"
        log.warning("MQTT %s; retrying with back-off", self._last_error)

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags,
        reason_code: ReasonCode, properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and reason_code.is_failure:
            log.warning("MQTT connection lost (%s); messages wait in the journal until the "
                        "broker is back", reason_code)

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int,
        reason_code: ReasonCode, properties: Properties | None,
    ) -> None:
        self._inbox.put(_Ack(mid))

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic == self.topics.ha_status:
            if message.payload == b"online" and self.settings.ha_discovery:
                log.info("Home Assistant is online: republishing discovery configs")
                self._send_direct(
                    self.topics.discovery_messages(self._machines, self.settings.device_name)
                )
            return
        name = self.topics.command_name(message.topic)
        if name is not None:
            self.commands.submit(name, message.payload, self._reply)

    def _reply(self, reply: CommandReply) -> None:
        (self._successor or self)._send_direct([self.topics.reply_message(reply)])
