"""On-disk outbox: a message is stored here before it is published and removed only when
the broker acknowledged it, so an alarm survives a broker outage and a daemon crash.

SQLite (standard library) in WAL mode with `synchronous=FULL`: when `append` returns, its
rows are in the write-ahead log and that file is fsynced (SQLite also fsyncs the directory
when it creates the log; `Journal` fsyncs it when it creates the database), so they survive
a SIGKILL and, on storage that honours fsync, a power cut. Rows keep increasing sequence
numbers (AUTOINCREMENT never reuses one), which is the delivery order, also across
restarts. Retained state is coalesced per topic (only the newest matters); events are
bounded by `max_events`, and when full the oldest event is dropped with an ERROR log
naming it: never silently. The log is checkpointed into the database every 1000 pages and
truncated to `WAL_LIMIT_BYTES` after, so the files stay bounded by the rows they hold.

The last message of every alarm not yet ended is kept too (table `open_alarms`, written in
the same transaction as the message), so the daemon can end an alarm it was in when it died.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_monitor.core.atomic import fsync_dir
from edge_monitor.mqtt.topics import Message, alarm_of

log = logging.getLogger(__name__)

KIND_EVENT = "event"
KIND_STATE = "state"
KINDS = (KIND_EVENT, KIND_STATE)
SCHEMA_VERSION = 2  # 2 added open_alarms; a version 1 file gains the table when opened
WAL_LIMIT_BYTES = 4 * 1024 * 1024

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        label TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS open_alarms (
        event_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL
    )""",
)


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    kind: str
    message: Message
    label: str


class Journal:
    """Thread-safe outbox; one writer process per file (the daemon)."""

    def __init__(self, path: Path, max_events: int = 10_000) -> None:
        if max_events < 1:
            raise ValueError(f"journal max_events must be >= 1, got {max_events}")
        self.path = Path(path)
        self.max_events = max_events
        self.dropped_events = 0
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        try:
            self._db = self._open(self.path)
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "MQTT journal %s is unreadable (%s): moved it to %s and started an empty one; "
                "messages that were waiting in it are not delivered",
                self.path, exc, aside,
            )
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open(self.path)
            created = True
        if created:  # the new file's name must survive a power cut like its rows
            fsync_dir(self.path.parent)
        backlog = self.count()
        if backlog:
            log.info("MQTT journal %s holds %d undelivered messages", self.path, backlog)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if not 0 <= version <= SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"journal schema version {version}, this runtime reads up to "
                    f"{SCHEMA_VERSION}"
                )
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def append(self, items: Sequence[tuple[Message, str, str]]) -> list[int]:
        """Store (message, kind, label) items durably in one transaction (one fsync for a
        burst) and return their sequence numbers, in order. An alarm event also records
        (`new`, `update`) or forgets (`end`) its alarm in `open_alarms`."""
        for _, kind, _ in items:
            if kind not in KINDS:
                raise ValueError(f"journal kind {kind!r} is not one of {KINDS}")
        seqs = []
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for message, kind, label in items:
                if kind == KIND_STATE:
                    self._db.execute(
                        "DELETE FROM outbox WHERE kind = ? AND topic = ?",
                        (KIND_STATE, message.topic),
                    )
                else:
                    self._make_room()
                cursor = self._db.execute(
                    "INSERT INTO outbox (kind, topic, payload, qos, retain, label, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (kind, message.topic, message.payload, message.qos, int(message.retain),
                     label, time.time()),
                )
                seqs.append(int(cursor.lastrowid))
                if kind == KIND_EVENT:
                    self._track_alarm(message, seqs[-1])
        return seqs

    def _track_alarm(self, message: Message, seq: int) -> None:
        alarm = alarm_of(message)
        if alarm is None:
            return
        kind, event_id = alarm
        if kind == "end":
            self._db.execute("DELETE FROM open_alarms WHERE event_id = ?", (event_id,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO open_alarms (event_id, seq, topic, payload) "
                "VALUES (?, ?, ?, ?)", (event_id, seq, message.topic, message.payload),
            )

    def open_alarms(self) -> list[bytes]:
        """The payload of the last journaled message of every alarm without an `end`,
        oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM open_alarms ORDER BY seq").fetchall()
        return [bytes(payload) for (payload,) in rows]

    def _make_room(self) -> None:
        (events,) = self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = ?", (KIND_EVENT,)
        ).fetchone()
        excess = events - self.max_events + 1
        if excess <= 0:
            return
        oldest = self._db.execute(
            "SELECT seq, topic, label, created_at FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?",
            (KIND_EVENT, excess),
        ).fetchall()
        for seq, topic, label, created_at in oldest:
            log.error(
                "MQTT journal %s is full (%d undelivered events): DROPPED the oldest event %s on "
                "%s, stored %s; the broker has been unreachable for long, check it or raise "
                "mqtt.journal_max_events",
                self.path, events, label or f"#{seq}", topic,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created_at)),
            )
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self.dropped_events += 1

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[JournalEntry]:
        """Undelivered messages with a sequence number above `after_seq`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, topic, payload, qos, retain, label FROM outbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            JournalEntry(seq, kind, Message(topic, bytes(payload), qos, bool(retain)), label)
            for seq, kind, topic, payload, qos, retain, label in rows
        ]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget messages the broker acknowledged (no-op for rows coalesced away)."""
        with self._lock, self._db:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def count(self) -> int:
        with self._lock:
            (total,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(total)

    def close(self) -> None:
        with self._lock:
            self._db.close()
