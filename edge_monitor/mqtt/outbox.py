"""The MQTT outbox: journal first, then paho, in order, at most `max_inflight` at a time.

`enqueue` writes the message to the on-disk journal on the caller's thread and returns only
once it is durable (one SQLite commit with an fsync; 8 ms median on the dev VM's disk):
what `enqueue` accepted survives a SIGKILL the next instant. The outbox's worker thread then
hands journal rows to paho while connected; paho's PUBACK removes them. While the broker is
away messages sit in the journal; on (re)connect, also after a restart, the backlog goes out
oldest first. paho resends what it had in flight when a connection drops, so each row is
handed to paho once per process (and again by `restart_delivery`, after a new paho client).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from edge_monitor.mqtt.journal import Journal
from edge_monitor.mqtt.topics import Message

log = logging.getLogger(__name__)

_STOP = object()
_WAKE = object()
_RESTART = object()


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
        self._lock = threading.Lock()  # journal opening and the stopped flag
        self.refused = 0  # messages offered after close(): not delivered
        self.inflight: dict[int, int] = {}
        self._last_handed = 0
        self._progress_at = time.monotonic()  # last PUBACK, (re)connect, or first in flight
        self.last_error: str | None = None
        self.journal: Journal | None = None
        self._client: paho.Client | None = None
        self._worker: threading.Thread | None = None
        self._stopped = False

    def start(self, client: paho.Client) -> None:
        """Open the journal (if `enqueue` did not already) and hand its backlog, oldest
        first, to `client` once connected."""
        self.open_journal()
        self.inflight.clear()
        self._last_handed = 0
        self._client = client
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()

    def open_journal(self) -> Journal:
        """Opened on first use, so a client that is built but never used (`check`) writes
        nothing, and one replacing another at a reload journals from its first message."""
        with self._lock:
            return self._journal_locked()

    def _journal_locked(self) -> Journal:
        if self.journal is None:
            self.journal = Journal(self.journal_path, self.max_events)
        return self.journal

    def restart_delivery(self, client: paho.Client) -> None:
        """A new paho client replaces a stuck one: what the old one had in flight is
        handed again, oldest first (its PUBACKs can no longer come); a worker that died is
        started again."""
        self._client = client
        self._progress_at = time.monotonic()
        self._inbox.put(_RESTART)
        if self._worker is not None and not self._worker.is_alive():
            log.error("the MQTT outbox worker had ended; starting it again")
            self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
            self._worker.start()

    def connected_again(self) -> None:
        """paho (re)connected: resent in-flight messages get a fresh stall timeout."""
        self._progress_at = time.monotonic()
        self._inbox.put(_WAKE)

    def stalled_s(self) -> float:
        """How long messages have been in flight without any PUBACK (0 when none is)."""
        return time.monotonic() - self._progress_at if self.inflight else 0.0

    def close(self) -> int:
        """Stop the worker and close the journal; returns how many messages stay in it."""
        with self._lock:  # nothing can be journaled after this
            self._stopped = True
        self._inbox.put(_STOP)
        if self._worker is not None:
            self._worker.join()
        with self._lock:
            journal, self.journal = self.journal, None
        backlog = journal.count() if journal is not None else 0
        if journal is not None:
            journal.close()
        self._client = self._worker = None
        return backlog

    def enqueue(self, message: Message, kind: str, label: str) -> None:
        """Journal the message durably now (any thread), then let the worker deliver it.
        If the journal cannot be written (disk full), publish it from memory and say so."""
        with self._lock:
            if self._stopped:
                self.refused += 1
                log.error("MQTT client is stopped: DROPPED %s on %s", label, message.topic)
                return
            try:
                self._journal_locked().append([(message, kind, label)])
            except (sqlite3.Error, OSError) as exc:
                self.last_error = f"MQTT journal {self.journal_path} failed: {exc}"
                log.error("cannot write %s to the MQTT journal (%s): publishing it without "
                          "durability; free disk space or fix %s", label, exc,
                          self.journal_path)
                self._send_direct([message])
                return
        self._inbox.put(_WAKE)

    def acknowledged(self, mid: int) -> None:
        """paho's PUBACK (network thread)."""
        self._inbox.put(_Ack(mid))

    def idle(self) -> bool:
        journal = self.journal
        return journal is None or journal.count() == 0

    # Worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._inbox.get()]
            while not self._inbox.empty():  # take the whole burst
                items.append(self._inbox.get_nowait())
            stopping = _STOP in items
            if _RESTART in items:
                self.inflight.clear()
                self._last_handed = 0
            try:
                acked = [self.inflight.pop(i.mid, None) for i in items if isinstance(i, _Ack)]
                if any(seq is not None for seq in acked):
                    self._progress_at = time.monotonic()
                if self.journal is not None and any(acked):
                    self.journal.remove(seq for seq in acked if seq is not None)
                self._pump()
            except (sqlite3.Error, OSError) as exc:  # keep delivering once the disk recovers
                self.last_error = f"MQTT journal {self.journal_path} failed: {exc}"
                log.error("%s; messages already journaled are kept and sent later",
                          self.last_error)
            except Exception as exc:  # one bad turn must not end delivery for good
                self.last_error = f"MQTT outbox failed: {type(exc).__name__}: {exc}"
                log.exception("MQTT outbox failed; messages stay in the journal")

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
                    if not self.inflight:
                        self._progress_at = time.monotonic()
                    self.inflight[info.mid] = entry.seq
                else:
                    log.error("paho refused %s on %s (%s); it stays in the journal until restart",
                              entry.label, m.topic, paho.error_string(info.rc))
