"""The on-disk outbox: order, durability across reopen, coalescing, bound, corruption, and
the open alarms it keeps for the `end` after a crash."""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timezone

from edge_monitor.mqtt.journal import _SCHEMA, KIND_EVENT, KIND_STATE, WAL_LIMIT_BYTES, Journal
from edge_monitor.mqtt.topics import AlarmEvent, Message, TopicTree


def event(n: int) -> Message:
    return Message("edge-monitor/b/machines/pump/events", f'{{"n":{n}}}'.encode(), 1, False)


def state(machine: str, status: str) -> Message:
    return Message(f"edge-monitor/b/machines/{machine}/state", status.encode(), 1, True)


def test_entries_come_back_in_order_and_survive_reopening(tmp_path):
    path = tmp_path / "sub" / "journal.sqlite3"
    journal = Journal(path)
    seqs = journal.append([(event(n), KIND_EVENT, f"e{n}") for n in range(3)])
    seqs += journal.append([(event(n), KIND_EVENT, f"e{n}") for n in range(3, 5)])
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    journal.remove([seqs[1]])
    journal.close()

    reopened = Journal(path)
    entries = reopened.pending()
    assert [e.message.payload for e in entries] == [event(n).payload for n in (0, 2, 3, 4)]
    assert entries[0].message == event(0) and entries[0].label == "e0"
    assert [e.seq for e in reopened.pending(after_seq=seqs[2], limit=1)] == [seqs[3]]
    # Sequence numbers are never reused, so new rows sort after the backlog.
    assert reopened.append([(event(9), KIND_EVENT, "")])[0] > seqs[-1]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_state_is_coalesced_per_machine(tmp_path):
    journal = Journal(tmp_path / "j.sqlite3")
    journal.append([(state("pump", "normal"), KIND_STATE, "pump"), (event(1), KIND_EVENT, "")])
    journal.append([(state("fan", "normal"), KIND_STATE, "fan")])
    journal.append([(state("pump", "anomaly"), KIND_STATE, "pump")])
    payloads = [e.message.payload for e in journal.pending()]
    assert payloads == [event(1).payload, b"normal", b"anomaly"]


def test_full_journal_drops_the_oldest_event_loudly(tmp_path, caplog):
    journal = Journal(tmp_path / "j.sqlite3", max_events=3)
    journal.append([(state("pump", "normal"), KIND_STATE, "pump")])
    journal.append([(event(n), KIND_EVENT, f"event-{n}") for n in range(4)])
    journal.append([(event(4), KIND_EVENT, "event-4")])
    remaining = [e.message.payload for e in journal.pending() if e.kind == KIND_EVENT]
    assert remaining == [event(n).payload for n in (2, 3, 4)]
    assert journal.dropped_events == 2
    dropped = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "event-0" in dropped[0].getMessage() and "event-1" in dropped[1].getMessage()
    assert journal.count() == 4  # the state is not counted against the event bound


def test_unreadable_journal_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    journal = Journal(path)
    assert journal.count() == 0
    journal.append([(event(1), KIND_EVENT, "")])
    aside = list(tmp_path.glob("j.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def alarm(kind: str, event_id: str, peak: float) -> Message:
    at = datetime(2026, 12, 1, 22, 0, tzinfo=timezone.utc)
    event = AlarmEvent(kind, event_id, "pump", at, at, peak, 1.0, "m", "b",
                       ended_at=at if kind == "end" else None, message_id=f"{kind}-{event_id}")
    return TopicTree("b").event_message(event)


def test_open_alarms_follow_their_events_across_reopening(tmp_path):
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    journal.append([(alarm("new", "a", 2.0), KIND_EVENT, ""), (alarm("new", "b", 3.0),
                                                               KIND_EVENT, "")])
    journal.append([(alarm("update", "a", 4.0), KIND_EVENT, ""), (event(1), KIND_EVENT, "")])
    journal.append([(alarm("end", "b", 3.0), KIND_EVENT, "")])
    # Delivered (acknowledged) rows leave the outbox; the alarm stays open until its end.
    journal.remove(e.seq for e in journal.pending())
    journal.close()
    reopened = Journal(path)
    assert reopened.count() == 0
    assert reopened.open_alarms() == [alarm("update", "a", 4.0).payload]
    reopened.append([(alarm("end", "a", 4.0), KIND_EVENT, "")])
    assert reopened.open_alarms() == []


def test_version_1_journal_is_upgraded_with_its_backlog(tmp_path):
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA[0])
        db.execute("INSERT INTO outbox (kind, topic, payload, qos, retain, label, created_at) "
                   "VALUES ('event', 't', x'7b7d', 1, 0, 'old', 0)")
        db.execute("PRAGMA user_version=1")
    journal = Journal(path)
    assert [e.label for e in journal.pending()] == ["old"] and journal.open_alarms() == []
    journal.append([(alarm("new", "a", 2.0), KIND_EVENT, "")])
    assert len(journal.open_alarms()) == 1
    journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == -1  # per connection
    assert Journal(path)._db.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_LIMIT_BYTES


def test_a_journal_from_a_newer_runtime_is_moved_aside(tmp_path, caplog):
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=3")
    assert Journal(path).count() == 0
    assert list(tmp_path.glob("j.sqlite3.corrupt-*"))
    assert any("schema version 3" in r.getMessage() for r in caplog.records)
