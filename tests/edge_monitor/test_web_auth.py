"""Access to the web view: a wide bind needs a token, and without it nothing is served.

The server here is the real `WebServer` bound to 0.0.0.0 (every request of the test still
goes to 127.0.0.1) over a live feed and a clip store with one real clip; the daemon's
parts it reads are plain functions returning what a daemon would.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import numpy as np
import pytest
import yaml
from daemon_support import DaemonThread, small_config, synth, write_config, write_flac
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from web_support import connected, http, post_json, wait_for

from edge_monitor.cli import main
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import WebSection
from edge_monitor.core.errors import ConfigError
from edge_monitor.demo.local_broker import free_port
from edge_monitor.pipeline.clip_store import ClipStore
from edge_monitor.pipeline.live import LiveFeed
from edge_monitor.web.auth import COOKIE_NAME
from edge_monitor.web.context import WebContext
from edge_monitor.web.server import WebServer

TOKEN = "s3cret-token-for-the-test"


def _config_error(tmp_path: Path, web: dict) -> str:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "web": web}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_a_wide_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    message = _config_error(tmp_path, {"enabled": True, "host": "0.0.0.0"})
    assert "web.host = '0.0.0.0'" in message and "token" in message and "edge.yaml" in message
    assert "web.public_url" in _config_error(tmp_path, {"enabled": True,
                                                        "public_url": "ftp://box/"})
    assert "web.token_file" in _config_error(tmp_path, {"enabled": True, "host": "0.0.0.0",
                                                        "token_file": "missing-token"})
    # Loopback needs no token; a token file makes a wide bind acceptable.
    (tmp_path / "token").write_text(TOKEN + "\n")
    for web in ({"enabled": True, "host": "127.0.0.1"}, {"enabled": True, "host": "::1"},
                {"enabled": True, "host": "0.0.0.0", "token_file": "token"}):
        path = tmp_path / "ok.yaml"
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "web": web}))
        assert load_config(path).web.host == web["host"]


@dataclass
class Served:
    base: str
    clip: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    clips = ClipStore(tmp_path / "clips")
    rate = 16000
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    clip = clips.save("pump", tone, rate, "6f1c8a52-1d1e-4f0e-9d5e-0a4a1f9b3c21", 1.7e9)
    live = LiveFeed()
    live.add_score("pump", 1.7e9, 0.5, 1.0)
    port = free_port()
    settings = WebSection(enabled=True, host="0.0.0.0", port=port, token_file=token_file)
    context = WebContext("box1", live, lambda: {"machines": {}}, lambda: None,
                         lambda: tmp_path / "clips", lambda: {"origin": "builtin"})
    server = WebServer(settings, context)
    server.start()
    try:
        yield Served(f"http://127.0.0.1:{port}", clip.name)
    finally:
        server.stop()


def test_nothing_is_served_without_the_token(served: Served) -> None:
    paths = ["/api/status", "/api/alarms", "/api/stream", "/metrics", f"/clips/{served.clip}",
             f"/clips/{served.clip}/spectrogram.png", "/static/app.js"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Cookie": f"{COOKIE_NAME}={TOKEN}"}):
            reply = http(served.base + path, headers=headers)
            assert reply.status == 401, (path, headers, reply.status)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
    page = http(served.base + "/")
    assert page.status == 303 and page.headers["Location"] == "/login"
    assert http(served.base + "/login").status == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in paths[:2] + paths[3:]:
        assert http(served.base + path, headers=bearer).status == 200, path
    clip = http(served.base + f"/clips/{served.clip}", headers=bearer)
    assert clip.headers["Content-Type"] == "audio/flac" and clip.body.startswith(b"fLaC")


def test_login_sets_a_strict_session_cookie_and_posts_still_need_csrf(served: Served) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    wrong = http(served.base + "/login", "POST", form, b"token=nope")
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    cross = http(served.base + "/login", "POST", {**form, "Origin": "http://evil.example"},
                 f"token={TOKEN}".encode())
    assert cross.status == 403
    ok = http(served.base + "/login", "POST", form, f"token={TOKEN}".encode())
    assert ok.status == 303 and ok.headers["Location"] == "/"
    cookie = SimpleCookie(ok.headers["Set-Cookie"])[COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert TOKEN not in cookie.value
    session = {"Cookie": f"{COOKIE_NAME}={cookie.value}"}
    assert http(served.base + "/api/status", headers=session).status == 200
    assert http(served.base + "/", headers=session).status == 200
    # A cookie is ambient: a POST with it alone is refused by the CSRF check; a bearer
    # token is not, and reaches the read-only refusal (commands are off here).
    refused = post_json(served.base + "/api/enrol/start", {"machine": "pump", "seconds": 5},
                        session)
    assert refused.status == 403 and "CSRF" in refused.json()["error"]
    read_only = post_json(served.base + "/api/enrol/start", {"machine": "pump", "seconds": 5},
                          {"Authorization": f"Bearer {TOKEN}"})
    assert read_only.status == 403 and "read-only" in read_only.json()["error"]


def test_the_browser_logs_in_with_the_token(served: Served, chromium: WebDriver) -> None:
    chromium.get(served.base + "/")
    wait_for(lambda: chromium.current_url.endswith("/login"), "the login page")
    chromium.find_element(By.NAME, "token").send_keys(TOKEN)
    chromium.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: connected(chromium), "the page's event stream after login")
    assert chromium.find_element(By.CSS_SELECTOR, 'article[data-machine="pump"]')


def test_check_reads_the_token_and_names_the_view(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    path = tmp_path / "edge.yaml"
    web = {"enabled": True, "host": "0.0.0.0", "port": 9090, "token_file": "token",
           "public_url": "https://box1.plant.example"}
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "web": web}))
    assert main(["check", "-c", str(path)]) == 0
    assert "web view: https://box1.plant.example (token required, read-only)" in \
        capsys.readouterr().out
    token.write_text("")
    assert main(["check", "-c", str(path)]) == 2
    assert "web token is empty" in capsys.readouterr().err


def test_a_port_in_use_stops_the_daemon_at_start_naming_the_key(tmp_path: Path) -> None:
    clip = write_flac(tmp_path / "machine.flac", synth(3.0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = small_config(tmp_path, [clip], web={"enabled": True, "port": port})
        daemon = DaemonThread(write_config(tmp_path, config))
        with pytest.raises(ConfigError, match=f"web: cannot listen on 127.0.0.1:{port}.*web.port"):
            daemon.wait(30)
    assert daemon.daemon.processor is None and daemon.daemon.mqtt is None
