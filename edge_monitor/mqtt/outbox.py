"""The MQTT outbox: journal first, then paho, in order, at most `max_inflight` at a time.

Publishers only put a message on an in-memory queue (never blocking on the network or the
disk). The outbox's worker thread writes each burst to the on-disk journal in one
transaction and then hands journal rows to paho while connected; paho's PUBACK removes them.
While the broker is away messages sit in the journal; on (re)connect, also after a restart,
the backlog goes out oldest first. paho resends what it had in flight when a connection
drops, so each row is handed to paho once per process.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from edge_monitor.mqtt.journal import Journal
from edge_monitor.mqtt.topics import Message

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 10_000  # messages waiting for the journal (memory bound if the disk stalls)
_STOP = object()
_WAKE = object()


@dataclass(frozen=True)
class _Outgoing:
    message: Message
    kind: str
    label: str


@dataclass(frozen=True)
class _Ack:
    mid: int


class Outbox:
    """The durable queue between the publishers and one paho client."""

    def __init__(self, journal_path: Path, max_events: int, max_inflight: int,
                 connected: threading.Event, send_direct: Callable[[Iterable[Message]], None]
                 ) -> None:
        self.journal_path = journal_path
        self.max_events = max_events
        self.max_inflight = max_inflight
        self._connected = connected
        self._send_direct = send_direct
        self._inbox: queue.Queue[object] = queue.Queue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self.overflow_drops = 0
        self.inflight: dict[int, int] = {}
        self._last_handed = 0
        self.last_error: str | None = None
        self.journal: Journal | None = None
        self._client: paho.Client | None = None
        self._worker: threading.Thread | None = None
        self._stopped = False

    def start(self, client: paho.Client) -> None:
        """Open the journal and hand its backlog, oldest first, to `client` once connected."""
        self.journal = Journal(self.journal_path, self.max_events)
        self.inflight.clear()
        self._last_handed = 0
        self._stopped = False
        self._client = client
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()

    def close(self) -> int:
        """Stop the worker and close the journal; returns how many messages stay in it."""
        with self._queued_lock:  # nothing can be queued behind the stop marker
            self._stopped = True
            self._inbox.put(_STOP)
        if self._worker is not None:
            self._worker.join()
        journal = self.journal
        backlog = journal.count() if journal is not None else 0
        if journal is not None:
            journal.close()
        self.journal = self._client = self._worker = None
        return backlog

    def enqueue(self, message: Message, kind: str, label: str) -> None:
        """Queue for the worker; before `start()` messages wait, after `close()` they cannot."""
        with self._queued_lock:
            if self._stopped:
                log.error("MQTT client is stopped: DROPPED %s on %s", label, message.topic)
                return
            if self._queued >= MAX_QUEUED_MESSAGES:
                self.overflow_drops += 1
                log.error(
                    "MQTT outbox queue is full (%d waiting for the journal): DROPPED %s on %s",
                    self._queued, label, message.topic,
                )
                return
            self._queued += 1
            self._inbox.put(_Outgoing(message, kind, label))

    def acknowledged(self, mid: int) -> None:
        """paho's PUBACK (network thread)."""
        self._inbox.put(_Ack(mid))

    def wake(self) -> None:
        """Connected again: hand the backlog to paho."""
        self._inbox.put(_WAKE)

    def idle(self) -> bool:
        with self._queued_lock:
            queued = self._queued
        return queued == 0 and self.journal is not None and self.journal.count() == 0

    # Worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._inbox.get()]
            while not self._inbox.empty():  # take the whole burst: one journal transaction
                items.append(self._inbox.get_nowait())
            stopping = _STOP in items
            try:
                self._store([i for i in items if isinstance(i, _Outgoing)])
                acked = [self.inflight.pop(i.mid, None) for i in items if isinstance(i, _Ack)]
                if self.journal is not None and any(acked):
                    self.journal.remove(seq for seq in acked if seq is not None)
                self._pump()
            except (sqlite3.Error, OSError) as exc:  # keep delivering once the disk recovers
                self.last_error = f"MQTT journal {self.journal_path} failed: {exc}"
                log.error("%s; messages already journaled are kept and sent later",
                          self.last_error)

    def _store(self, items: list[_Outgoing]) -> None:
        if not items:
            return
        try:
            if self.journal is not None:  # set for the worker's whole life
                self.journal.append([(i.message, i.kind, i.label) for i in items])
        except (sqlite3.Error, OSError) as exc:  # disk full: still try to deliver from memory
            log.error("cannot write %d message(s) to the MQTT journal (%s): publishing them "
                      "without durability; free disk space or fix %s", len(items), exc,
                      self.journal_path)
            self._send_direct([i.message for i in items])
        finally:
            with self._queued_lock:
                self._queued -= len(items)

    def _pump(self) -> None:
        client, journal = self._client, self.journal
        while client is not None and journal is not None and self._connected.is_set():
            room = self.max_inflight - len(self.inflight)
            entries = journal.pending(self._last_handed, room) if room > 0 else []
            if not entries:
                return
            for entry in entries:
                m = entry.message
                info = client.publish(m.topic, m.payload, m.qos, m.retain)
                self._last_handed = entry.seq
                if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    self.inflight[info.mid] = entry.seq
                else:
                    log.error("paho refused %s on %s (%s); it stays in the journal until restart",
                              entry.label, m.topic, paho.error_string(info.rc))
