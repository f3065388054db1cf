"""The notify protocol against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from edge_monitor.pipeline.service import Notifier, watchdog_interval_s


@pytest.fixture
def listener(tmp_path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a file path, and the NOTIFY_SOCKET value naming it."""
    path = str(tmp_path / "notify.sock")
    assert len(path) < 108, "AF_UNIX path too long for this tmp_path"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, named '@...' as systemd writes it."""
    name = f"edge-monitor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    yield sock, "@" + name
    sock.close()


def test_messages_are_the_exact_datagrams(listener, monkeypatch) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.ready("listening on hw:1")
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening on hw:1"
    assert notifier.status("pump-1 normal\nscore 0.12")
    assert sock.recv(4096) == b"STATUS=pump-1 normal score 0.12"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"
    notifier.close()


def test_reloading_carries_the_monotonic_time(listener) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match is not None
    assert before <= int(match.group(1)) <= after
    notifier.close()


def test_abstract_namespace_socket(abstract_listener) -> None:
    sock, name = abstract_listener
    notifier = Notifier({"NOTIFY_SOCKET": name})
    assert notifier.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    notifier.close()


def test_without_notify_socket_everything_is_a_quiet_no_op(monkeypatch, caplog) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    with caplog.at_level(logging.DEBUG, logger="edge_monitor.pipeline.service"):
        results = [
            notifier.ready(),
            notifier.watchdog(),
            notifier.ping_watchdog_if_due(),
            notifier.status("x"),
            notifier.stopping(),
            notifier.reloading(),
        ]
    assert not notifier.enabled
    assert results == [False] * 6
    assert caplog.records == []


def test_send_failure_warns_once_and_never_raises(tmp_path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level(logging.WARNING, logger="edge_monitor.pipeline.service"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("still going") is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens.sock" in warnings[0].getMessage()
    notifier.close()


def test_relative_notify_socket_is_refused_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_monitor.pipeline.service"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not notifier.enabled
    assert "relative/notify.sock" in caplog.text


def test_watchdog_interval_is_half_the_period() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    own = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": own}) == 15.0
    other = str(os.getpid() + 1)
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"},
    ],
)
def test_bad_watchdog_variables_are_ignored_with_a_warning(environ, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_monitor.pipeline.service"):
        assert watchdog_interval_s(environ) is None
    assert "WATCHDOG" in caplog.text


def test_ping_if_due_rate_limits_the_watchdog(listener) -> None:
    sock, path = listener
    slow = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000000"})
    assert slow.watchdog_interval_s == 300.0
    assert slow.ping_watchdog_if_due()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert not slow.ping_watchdog_if_due()

    fast = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000"})
    assert fast.ping_watchdog_if_due()
    time.sleep(0.01)
    assert fast.ping_watchdog_if_due()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096) == b"WATCHDOG=1"

    no_watchdog = Notifier({"NOTIFY_SOCKET": path})
    assert not no_watchdog.ping_watchdog_if_due()
    for notifier in (slow, fast, no_watchdog):
        notifier.close()
