"""The daemon's MQTT connection: availability, state, alarm events, telemetry, commands.

Callers never wait on the network: states and events go through the durable outbox
(edge_monitor.mqtt.outbox: journal first, then paho, in order), telemetry straight to paho
while connected (a lost score is replaced by the next window's). Commands under `cmd/` go
to the command router (edge_monitor.mqtt.commands), replies to `cmd/result`.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_monitor.config.sections import MqttSection
from edge_monitor.core.errors import ConfigError
from edge_monitor.mqtt.commands import CommandRouter
from edge_monitor.mqtt.health import HealthWatch, check_interval_s, network_thread_alive
from edge_monitor.mqtt.journal import KIND_EVENT, KIND_STATE
from edge_monitor.mqtt.outbox import Outbox
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
    utc_now,
)

log = logging.getLogger(__name__)

COMMAND_QUEUE_SIZE = 8  # commands waiting for the command worker


@dataclass(frozen=True)
class MqttStats:
    connected: bool
    backlog: int
    in_flight: int
    dropped_events: int
    last_error: str | None
    restarts: int  # by the health check: paho's network thread ended or stopped acknowledging


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
        self._connected = threading.Event()
        self.outbox = Outbox(journal_path, settings.journal_max_events, settings.max_inflight,
                             self._connected, self._send_direct)
        self._last_error: str | None = None
        # The newest state (and bundle status) per label, sent again at every reconnect: a
        # broker that lost its retained messages (no persistence, a timed save, a new
        # broker) would otherwise show nothing for a machine until its state changes.
        self._retained: dict[str, Message] = {}
        self._retained_lock = threading.Lock()
        self._was_connected = False
        self._paho: paho.Client | None = None
        self._successor: MqttClient | None = None
        self._prepared: paho.Client | None = None
        self.restarts = 0
        self._health = HealthWatch(self._problem, self._restart,
                                   check_interval_s(settings.stall_timeout_s))

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
        self._paho = client
        self.commands.start()
        self.outbox.start(client)
        client.connect_async(s.host, s.port, s.keepalive_s)
        client.loop_start()
        self._health.start()
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
        client.on_connect = self._isolated(self._on_connect)
        client.on_connect_fail = self._isolated(self._on_connect_fail)
        client.on_disconnect = self._isolated(self._on_disconnect)
        client.on_publish = self._isolated(self._on_publish)
        client.on_message = self._isolated(self._on_message)
        return client

    def _isolated(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a paho callback so no exception reaches paho's network thread: one there
        ends the loop thread, and with it every acknowledgement and command, while the
        process looks alive (what gets through, the health check restarts). Callbacks of a
        client the health check replaced are ignored: its message ids are not ours."""
        @functools.wraps(callback)
        def guarded(*args: object) -> None:
            if args and args[0] is not self._paho:
                return
            try:
                callback(*args)
            except Exception as exc:
                self._last_error = (f"internal error in MQTT {callback.__name__}: "
                                    f"{type(exc).__name__}: {exc}")
                log.exception("MQTT callback %s failed; the connection carries on",
                              callback.__name__)
        return guarded

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
        client = self._paho
        if client is None:
            return
        self._health.stop()
        client = self._paho  # a restart may have replaced it meanwhile
        assert client is not None
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
        backlog = self.outbox.close()
        self._paho = None
        log.info("MQTT stopped; %d undelivered messages stay in %s", backlog, self.journal_path)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far was acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.outbox.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # Publishing (any thread; never blocks on the network) ---------------------------

    def send(self, message: Message, kind: str | None, label: str) -> None:
        """Any message of the topic tree: `kind` KIND_EVENT or KIND_STATE goes through the
        journal (events are never lost; a state replaces the one queued before it); None is
        telemetry, dropped while disconnected (the next window brings a fresh one)."""
        if kind is not None:
            if kind == KIND_STATE:
                with self._retained_lock:
                    self._retained[label] = message
            self.outbox.enqueue(message, kind, label)
            return
        client = self._paho
        if client is not None and self._connected.is_set():
            client.publish(message.topic, message.payload, message.qos, message.retain)

    def publish_event(self, event: AlarmEvent) -> None:
        label = f"{event.type} {event.event_id} ({event.message_id})"
        self.send(self.topics.event_message(event), KIND_EVENT, label)

    def end_open_alarms(self) -> list[AlarmEvent]:
        """At start: send the `end` (reason `restart`) of every alarm the journal holds
        open, i.e. one the daemon was in when it died; its last message tells the alarm's
        id, start and peak. Call it once per process, before the processing loop starts (a
        client replacing another at a reload takes its open alarms over, not ends them)."""
        ended = []
        for payload in self.outbox.open_journal().open_alarms():
            try:
                last = AlarmEvent.from_json(payload)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("MQTT journal %s holds an open alarm that cannot be read (%s); it is "
                          "not ended", self.journal_path, exc)
                continue
            end = last.ended("restart", utc_now())
            self.publish_event(end)
            log.warning("machine %s: alarm end %s message %s (reason restart: the daemon "
                        "stopped during the alarm without ending it)", end.machine,
                        end.event_id, end.message_id)
            ended.append(end)
        return ended

    def publish_state(self, machine: str, state: MachineState) -> None:
        self.send(self.topics.state_message(machine, state), KIND_STATE, machine)

    def publish_bundle(self, status: BundleStatus) -> None:
        """The retained `bundle` topic: through the journal, like state."""
        self.send(self.topics.bundle_message(status), KIND_STATE, "bundle")

    def publish_score(self, machine: str, sample: ScoreSample) -> None:
        self.send(self.topics.score_message(machine, sample), None, machine)

    def set_machines(self, machines: Iterable[str]) -> None:
        """Change the monitored machines (after a reload): clear the retained state of
        removed machines (through the journal, so it follows any state still queued) and
        update Home Assistant discovery."""
        new = tuple(check_segment(m, "machine") for m in machines)
        removed = [m for m in self._machines if m not in new]
        self._machines = new
        for machine in removed:
            self.send(self.topics.state_clear_message(machine), KIND_STATE, machine)
        if self.settings.ha_discovery and self._connected.is_set():
            self._send_direct(self.topics.discovery_removal_messages(removed))
            self._send_direct(self._discovery(new))

    def stats(self) -> MqttStats:
        outbox, journal = self.outbox, self.outbox.journal
        return MqttStats(
            connected=self._connected.is_set(),
            backlog=journal.count() if journal is not None else 0,
            in_flight=len(outbox.inflight),
            dropped_events=outbox.refused + (journal.dropped_events if journal else 0),
            last_error=self._last_error or outbox.last_error,
            restarts=self.restarts,
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _discovery(self, machines: Iterable[str]) -> list[Message]:
        """Home Assistant's configs; buttons only for the commands this box accepts."""
        router = self.commands
        commands = router.allowed if router.enabled else frozenset()
        return self.topics.discovery_messages(machines, self.settings.device_name, commands)

    def _send_direct(self, messages: Iterable[Message]) -> None:
        client = self._paho
        for m in messages:
            if client is None:
                log.warning("MQTT client is stopped: %s not published", m.topic)
                continue
            client.publish(m.topic, m.payload, m.qos, m.retain)

    # Health (the health watch's thread) ----------------------------------------------

    def _problem(self) -> str | None:
        """What makes this client useless while the process lives on, or None."""
        client = self._paho
        if client is None:
            return None
        if not network_thread_alive(client):
            return "paho's network thread has ended"
        stalled_s = self.outbox.stalled_s()
        if self._connected.is_set() and stalled_s > self.settings.stall_timeout_s:
            return (f"no PUBACK for {stalled_s:.0f} s while connected with "
                    f"{len(self.outbox.inflight)} message(s) in flight (mqtt.stall_timeout_s "
                    f"{self.settings.stall_timeout_s:g})")
        return None

    def _restart(self, problem: str) -> None:
        """Replace the paho client with a fresh one on the same journal; the old one is
        retired on its own thread (its loop may be hung)."""
        try:
            fresh = self._new_paho()
        except ConfigError as exc:  # e.g. the password file went away: try again later
            log.error("MQTT client is stuck (%s) and cannot be restarted: %s", problem, exc)
            return
        self.restarts += 1
        self._last_error = f"MQTT client restarted ({self.restarts}): {problem}"
        log.error("MQTT client stopped making progress: %s; restarting it (restart %d); "
                  "undelivered messages stay in the journal and are sent again",
                  problem, self.restarts)
        old, self._paho = self._paho, fresh
        self._connected.clear()
        self.outbox.restart_delivery(fresh)
        if old is not None:
            threading.Thread(target=self._retire, args=(old,), name="mqtt-retire",
                             daemon=True).start()
        s = self.settings
        fresh.connect_async(s.host, s.port, s.keepalive_s)
        fresh.loop_start()

    @staticmethod
    def _retire(client: paho.Client) -> None:
        try:
            client.disconnect()
            client.loop_stop()
        except Exception as exc:  # a broken client may fail to close; it is dropped anyway
            log.warning("closing the replaced MQTT client failed: %s", exc)

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
        self._last_error = self.outbox.last_error = None
        log.info("MQTT connected to %s:%d", s.host, s.port)
        subscriptions = [(self.topics.command_filter, QOS_RELIABLE)]
        if s.ha_discovery:
            subscriptions.append((self.topics.ha_status, QOS_RELIABLE))
        client.subscribe(subscriptions)
        self._send_direct([self.topics.availability_message(online=True)])
        if s.ha_discovery:
            self._send_direct(self._discovery(self._machines))
        if self._was_connected:  # the first time, the journal sends them anyway
            with self._retained_lock:
                retained = list(self._retained.values())
            self._send_direct(retained)
        self._was_connected = True
        self._connected.set()
        self.outbox.connected_again()

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
        self.outbox.acknowledged(mid)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic == self.topics.ha_status:
            if message.payload == b"online" and self.settings.ha_discovery:
                log.info("Home Assistant is online: republishing discovery configs")
                self._send_direct(self._discovery(self._machines))
            return
        name = self.topics.command_name(message.topic)
        if name is not None:
            self.commands.submit(name, message.payload, self._reply)

    def _reply(self, reply: CommandReply) -> None:
        (self._successor or self)._send_direct([self.topics.reply_message(reply)])
