"""The loopback mosquitto used by the demo and the tests: starts, stops, and fails clearly."""

import socket

import pytest

from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.demo.local_broker import LOOPBACK, LocalMosquitto, free_port


def test_starts_on_its_port_and_stops(tmp_path):
    port = free_port()
    lines = [f"listener {port} {LOOPBACK}", "allow_anonymous true"]
    broker = LocalMosquitto(tmp_path, lines, [port])
    broker.start()
    try:
        assert broker.running
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    finally:
        broker.stop()
    assert not broker.running
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()


def test_a_broken_config_is_reported_with_mosquittos_own_words(tmp_path):
    port = free_port()
    broker = LocalMosquitto(tmp_path, [f"listener {port} {LOOPBACK}", "no_such_option 1"], [port])
    with pytest.raises(EdgeMonitorError, match="mosquitto exited with code"):
        broker.start()
