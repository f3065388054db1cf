"""A reload turns the web view on, moves it and turns it off, with the daemon running."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from daemon_support import DaemonThread, small_config, synth, write_config, write_flac
from web_support import http, wait_for

from edge_monitor.core.errors import EdgeMonitorError
from edge_monitor.demo.local_broker import free_port


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_reload_starts_moves_and_stops_the_web_view(tmp_path: Path) -> None:
    clip = write_flac(tmp_path / "machine.flac", synth(5.0))
    config = small_config(tmp_path, [clip])
    config["source"]["replay"].update(realtime=True, loop=True)
    path = write_config(tmp_path, config)
    daemon = DaemonThread(path)
    try:
        wait_for(lambda: daemon.daemon.processor is not None and daemon.daemon.processor.alive,
                 "the processing loop")
        assert daemon.daemon.web is None
        first, second = free_port(), free_port()
        for port in (first, second):
            write_config(tmp_path, {**config, "web": {"enabled": True, "port": port}})
            assert daemon.daemon.request_reload().result(30)["reloaded"]
            status = http(f"http://127.0.0.1:{port}/api/status").json()
            assert status["snapshot"]["machines"]["pump"]["status"] == "learning"
            assert daemon.daemon.processor is not None
            assert daemon.daemon.processor.reporter.clip_base_url == f"http://127.0.0.1:{port}"
        assert _refused(first)
        write_config(tmp_path, config)
        assert daemon.daemon.request_reload().result(30)["reloaded"]
        assert _refused(second) and daemon.daemon.web is None
        assert daemon.daemon.processor.reporter.live is None
    finally:
        assert daemon.stop() == 0


def test_a_reload_while_holding_after_the_replay_is_refused(tmp_path: Path) -> None:
    clip = write_flac(tmp_path / "machine.flac", synth(3.0))
    config = small_config(tmp_path, [clip])
    config["source"]["replay"]["hold"] = True
    daemon = DaemonThread(write_config(tmp_path, config))
    try:
        wait_for(lambda: daemon.daemon.processor is not None
                 and daemon.daemon.processor.finished.is_set(), "the end of the replay")
        with pytest.raises(EdgeMonitorError, match=r"source.replay.hold.*restart the daemon"):
            daemon.daemon.request_reload().result(30)
        assert daemon.daemon.stop_event.is_set() is False  # still holding
    finally:
        assert daemon.stop() == 0
