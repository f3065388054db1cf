"""On-disk outbox: a message is stored here before it is published and removed only when
the broker acknowledged it, so an alarm survives a broker outage and a daemon crash.

SQLite (standard library) in WAL mode with `synchronous=FULL`: a row that `append` returned
is on disk. Rows keep increasing sequence numbers (AUTOINCREMENT never reuses one), which
is the delivery order, also across restarts. Retained state is coalesced per topic (only
the newest matters); events are bounded by `max_events`, and when full the oldest event is
dropped with an ERROR log naming it: never silently.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_monitor.mqtt.topics import Message

log = logging.getLogger(__name__)

KIND_EVENT = "event"
KIND_STATE = "state"
KINDS = (KIND_EVENT, KIND_STATE)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    label TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


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
        backlog = self.count()
        if backlog:
            log.info("MQTT journal %s holds %d undelivered messages", self.path, backlog)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"journal schema version {version}, this runtime reads {SCHEMA_VERSION}"
                )
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def append(self, items: Sequence[tuple[Message, str, str]]) -> list[int]:
        """Store (message, kind, label) items durably in one transaction (one fsync for a
        burst) and return their sequence numbers, in order."""
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
        return seqs

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
