"""The on-disk outbox: order, durability across reopen, coalescing, bound, corruption."""

from __future__ import annotations

import logging
import sqlite3

from edge_monitor.mqtt.journal import KIND_EVENT, KIND_STATE, Journal
from edge_monitor.mqtt.topics import Message


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
