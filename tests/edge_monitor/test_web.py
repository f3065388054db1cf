"""The web view of a running daemon, in a real headless Chromium and over plain HTTP.

One daemon for the module: its bank is learned first from 10 s of a synthetic machine, then
it replays 36 s in real time (a bearing fault at 3-7 s) and holds after the replay
(`source.replay.hold`), with the web view on 127.0.0.1 (no token, commands allowed) and
MQTT to a real mosquitto. The tests run in file order: those that watch audio flow come
first (metrics changing, the page's live timeline and alarm, an enrolment from the page);
the others check what is left (clips, CSRF, host names, the conf/ examples).
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from daemon_support import RATE, DaemonThread, learn_first, small_config, synth, write_config
from daemon_support import write_flac as write_clip
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from web_support import connected, http, post_json, screenshot_path, wait_for

from edge_monitor.demo.local_broker import find_mosquitto, free_port
from edge_monitor.demo.scenario import Received, Subscriber, private_mosquitto
from edge_monitor.demo.synth import FaultSegment
from edge_monitor.mqtt.topics import COMMAND_NAMES, TopicTree
from edge_monitor.web.metrics import FAMILIES
from edge_monitor.web.spectrogram import PNG_SIGNATURE

REPO = Path(__file__).resolve().parents[2]
LIVE_S = 36.0
FAULT = FaultSegment("bearing", 13.0, 17.0)  # 3-7 s into the live replay

pytestmark = pytest.mark.skipif(find_mosquitto() is None,
                                reason="mosquitto is not installed: run `bash tools/setup.sh`")


@dataclass
class WebDaemon:
    daemon: DaemonThread
    base: str
    inbox: queue.Queue[Received]
    root: Path
    clip_dir: Path
    seen: list[Received] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return http(self.base + "/api/status").json()

    def replayed(self) -> bool:
        processor = self.daemon.daemon.processor
        return processor is not None and processor.finished.is_set()

    def events(self) -> list[dict[str, Any]]:
        """Every alarm message the subscriber received so far."""
        while not self.inbox.empty():
            self.seen.append(self.inbox.get_nowait())
        return [json.loads(m.payload) for m in self.seen if m.topic.endswith("/events")]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    root = tmp_path_factory.mktemp("web")
    audio = synth(10.0 + LIVE_S, (FAULT,), seed=7)
    learn_first(root, write_clip(root / "learn.flac", audio[: 10 * RATE]))
    live = write_clip(root / "live.flac", audio[10 * RATE:])
    mosquitto = find_mosquitto()
    assert mosquitto is not None
    (root / "broker").mkdir()
    broker = private_mosquitto(mosquitto, root / "broker")
    broker.start()
    inbox: queue.Queue[Received] = queue.Queue()
    subscriber = Subscriber(broker.host, broker.port, ["edge-monitor/#"], inbox)
    port = free_port()
    config = small_config(
        root, [live],
        source={"kind": "replay", "block_s": 0.05,
                "replay": {"paths": [str(live)], "realtime": True, "hold": True}},
        mqtt={"enabled": True, "host": broker.host, "port": broker.port,
              "reconnect_min_delay_s": 0.5, "reconnect_max_delay_s": 1.0},
        web={"enabled": True, "port": port, "commands_enabled": True},
        enrolment={"min_seconds": 1, "min_windows": 2},
    )
    daemon = DaemonThread(write_config(root, config))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: daemon.daemon.web is not None, "the web server")
        yield WebDaemon(daemon, base, inbox, root, root / "state" / "clips")
    finally:
        assert daemon.stop() == 0
        subscriber.stop()
        broker.stop()


def scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics: name{labels} -> value."""
    reply = http(base + "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


# While the audio flows -----------------------------------------------------------------


def test_metrics_change_while_audio_flows(web: WebDaemon) -> None:
    first = wait_for(lambda: (s := scrape(web.base)).get("edge_monitor_windows_total{}") and s,
                     "a first window in /metrics")
    second = wait_for(lambda: (s := scrape(web.base))["edge_monitor_windows_total{}"] > first[
        "edge_monitor_windows_total{}"] and s, "the window count to grow")
    assert second["edge_monitor_state{machine=pump,status=normal}"] in (0.0, 1.0)
    assert second["edge_monitor_broker_connected{}"] == 1.0
    assert second["edge_monitor_inference_seconds_count{machine=pump}"] > 0
    assert second["edge_monitor_threshold{machine=pump}"] > 0
    names = {key.split("{")[0] for key in second}
    text = http(web.base + "/metrics").body.decode()
    for family in FAMILIES:
        assert f"# TYPE {family}" in text, family
    assert {"edge_monitor_score", "edge_monitor_ratio", "edge_monitor_alarms_total",
            "edge_monitor_journal_depth", "edge_monitor_dropped_chunks_total"} <= names


def _pump_card(driver: WebDriver) -> Any:
    return driver.find_element(By.CSS_SELECTOR, 'article[data-machine="pump"]')


def _points(driver: WebDriver) -> int:
    """Points on the first machine's timeline."""
    cards = driver.find_elements(By.CSS_SELECTOR, "article.machine")
    return int(cards[0].get_attribute("data-points") or 0) if cards else 0


def _alarm_rows(driver: WebDriver) -> list[str]:
    """The alarm rows' text, read at once (the list is rebuilt when an alarm changes)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#alarms tbody tr[data-event-id]'))"
        ".map((row) => row.innerText);")


def _open(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait_for(lambda: connected(driver), "the page's event stream")


LOAD_AUDIO = """
const done = arguments[arguments.length - 1];
const audio = document.querySelector('#alarms audio');
if (!audio) { done(null); return; }
const report = () => done({duration: audio.duration, src: audio.currentSrc,
                           error: audio.error ? audio.error.code : null});
if (audio.readyState >= 1) { report(); return; }
audio.addEventListener('loadedmetadata', report);
audio.addEventListener('error', report);
audio.load();
"""
IMAGES_LOADED = """
return Array.from(document.querySelectorAll('#alarms img'))
  .map((img) => img.complete && img.naturalWidth > 0);
"""


def test_page_shows_the_live_timeline_and_plays_the_alarm(web: WebDaemon, chromium: WebDriver,
                                                          tmp_path: Path) -> None:
    _open(chromium, web.base + "/")
    assert not web.replayed(), "the replay ended before the page could watch it"
    before = wait_for(lambda: _points(chromium), "a first point on the timeline")
    wait_for(lambda: _points(chromium) > before, "the timeline to update")
    row = wait_for(lambda: [text for text in _alarm_rows(chromium) if "ended" in text],
                   "an ended alarm in the list")[0]
    assert "pump" in row and "×" in row
    loaded = chromium.execute_async_script(LOAD_AUDIO)
    assert loaded["error"] is None and loaded["duration"] > 0, loaded
    clip = http(loaded["src"])
    assert clip.status == 200 and clip.headers["Content-Type"] == "audio/flac"
    assert wait_for(lambda: (seen := chromium.execute_script(IMAGES_LOADED)) and all(seen),
                    "the spectrogram images")
    assert _pump_card(chromium).get_attribute("data-status") in ("normal", "anomaly")
    chromium.save_screenshot(str(screenshot_path(tmp_path, "web_view_live.png")))


def _enrol_state(driver: WebDriver) -> str | None:
    return driver.find_element(By.ID, "enrolment").get_attribute("data-state")


def test_enrolment_from_the_page(web: WebDaemon, chromium: WebDriver) -> None:
    _open(chromium, web.base + "/")
    assert chromium.find_element(By.ID, "enrolment").is_displayed()
    before = web.status()["snapshot"]["machines"]["pump"]["bank_version"]
    seconds = chromium.find_element(By.ID, "enrol-seconds")
    seconds.clear()
    seconds.send_keys("3")
    chromium.find_element(By.CSS_SELECTOR, 'button[data-action="start"]').click()
    wait_for(lambda: _enrol_state(chromium) == "recorded", "the recording to finish")
    assert not web.replayed(), "the replay ended during the enrolment"
    chromium.find_element(By.CSS_SELECTOR, 'button[data-action="commit"]').click()
    wait_for(lambda: _enrol_state(chromium) == "done", "the commit")
    enrolled = wait_for(lambda: (v := web.status()["snapshot"]["machines"]["pump"][
        "bank_version"]) != before and v, "the new bank")
    chromium.find_element(By.CSS_SELECTOR, 'button[data-action="rollback"]').click()
    wait_for(lambda: web.status()["snapshot"]["machines"]["pump"]["bank_version"] == before,
             "the rollback to the previous bank")
    assert enrolled != before


def test_this_alarm_was_normal_from_the_page(web: WebDaemon, chromium: WebDriver) -> None:
    _open(chromium, web.base + "/")
    before = web.status()["snapshot"]["machines"]["pump"]
    wait_for(lambda: [t for t in _alarm_rows(chromium) if "ended" in t], "the ended alarm")
    chromium.find_element(By.CSS_SELECTOR, "#alarms tr[data-event-id] button").click()
    notice = chromium.find_element(By.ID, "notice")
    wait_for(lambda: notice.get_attribute("data-outcome"), "the feedback's reply")
    assert notice.get_attribute("data-outcome") == "done", notice.text
    assert "alarm marked normal" in notice.text and "windows added" in notice.text
    after = web.status()["snapshot"]["machines"]["pump"]
    assert after["bank_version"] != before["bank_version"]
    assert after["threshold"] >= before["threshold"]


# After the replay ----------------------------------------------------------------------


def _replayed(web: WebDaemon) -> None:
    wait_for(web.replayed, "the end of the replay", 60.0)
    wait_for(lambda: any(e["type"] == "end" for e in web.events()), "the alarm's end event")


def test_events_carry_a_clip_url_a_subscriber_can_fetch(web: WebDaemon) -> None:
    _replayed(web)
    events = web.events()
    new = next(e for e in events if e["type"] == "new")
    end = next(e for e in events if e["type"] == "end" and e["event_id"] == new["event_id"])
    name = Path(new["clip_path"]).name
    assert new["clip_url"] == f"{web.base}/clips/{name}" == end["clip_url"]
    clip = http(new["clip_url"])
    assert clip.status == 200 and clip.headers["Content-Type"] == "audio/flac"
    audio, rate = sf.read(io.BytesIO(clip.body))
    assert rate == RATE and len(audio) == RATE  # one 1 s window, the one that raised it
    png = http(new["clip_url"] + "/spectrogram.png")
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    assert png.body.startswith(PNG_SIGNATURE)
    listed = http(web.base + "/api/alarms").json()
    assert any(a["event_id"] == new["event_id"] and a["clip"] == name for a in listed)


def test_clip_paths_cannot_leave_the_clip_directory(web: WebDaemon) -> None:
    _replayed(web)
    secret = web.root / "edge.yaml"
    assert secret.is_file()
    (web.clip_dir / "link.flac").symlink_to(secret)
    (web.clip_dir / ".hidden.flac").write_bytes(b"x")
    for path in ("/clips/..%2Fedge.yaml", "/clips/%2E%2E%2F%2E%2E%2Fedge.yaml",
                 "/clips/..%2F..%2Fedge.yaml/spectrogram.png", "/clips/link.flac",
                 "/clips/link.flac/spectrogram.png", "/clips/.hidden.flac",
                 "/clips/missing.flac", "/clips/edge.yaml", "/clips/..", "/static/..%2Fserver.py",
                 "/static/index.html"):
        reply = http(web.base + path)
        assert reply.status == 404, (path, reply.status)
        assert b"small_config" not in reply.body and b"state_dir" not in reply.body


def _csrf_token(base: str) -> str:
    page = http(base + "/").body.decode()
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match is not None
    return match.group(1)


def test_state_changing_requests_need_the_csrf_token_and_our_origin(web: WebDaemon) -> None:
    url = web.base + "/api/enrol/commit"
    token = _csrf_token(web.base)
    body = {"machine": "pump"}
    assert post_json(url, body).status == 403
    assert post_json(url, body, {"X-CSRF-Token": "forged"}).status == 403
    cross = post_json(url, body, {"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert cross.status == 403 and "cross-origin" in cross.json()["error"]
    fetched = post_json(url, body, {"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    assert fetched.status == 403
    # The right token from our own origin reaches the enrolment manager, which refuses a
    # commit with no enrolment running: the CSRF check let it through, nothing else did.
    ours = post_json(url, body, {"X-CSRF-Token": token, "Origin": web.base})
    assert ours.status == 400 and "no enrolment of pump is running" in ours.json()["error"]
    bad = post_json(web.base + "/api/enrol/start", {"machine": "../pump", "seconds": 3},
                    {"X-CSRF-Token": token})
    assert bad.status == 400 and "machine" in bad.json()["error"]
    feedback = post_json(web.base + "/api/alarms/some-id/normal", {}, {"X-CSRF-Token": token})
    assert feedback.status in (404, 501)


def test_without_a_token_only_loopback_host_names_are_answered(web: WebDaemon) -> None:
    port = web.base.rsplit(":", 1)[1]
    rebound = http(web.base + "/api/status", headers={"Host": f"evil.example:{port}"})
    assert rebound.status == 403 and "loopback" in rebound.json()["error"]
    assert http(web.base + "/api/status", headers={"Host": f"localhost:{port}"}).status == 200


# The examples in conf/ -----------------------------------------------------------------


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def test_grafana_dashboard_uses_metrics_the_daemon_exposes(web: WebDaemon) -> None:
    _replayed(web)
    exposed = {key.split("{")[0] for key in scrape(web.base)}
    dashboard = json.loads((REPO / "conf" / "grafana-dashboard.json").read_text())
    used = {name for expr in _exprs(dashboard) for name in re.findall(r"edge_monitor_\w+", expr)}
    assert len(used) >= 8
    assert used - exposed == set()


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: `+` one level, `#` the rest."""
    levels, parts = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(parts) or (level != "+" and level != parts[i]):
            return False
    return len(levels) == len(parts)


def test_node_red_flow_uses_the_daemons_topics() -> None:
    tree = TopicTree("box1")
    topics = [tree.availability, tree.bundle, tree.command_result,
              *(tree.command(name) for name in COMMAND_NAMES),
              *(f(machine) for machine in ("pump",) for f in (tree.state, tree.events,
                                                               tree.score))]
    flow = json.loads((REPO / "conf" / "node-red-flow.json").read_text())
    mqtt_nodes = [n for n in flow if n.get("type") in ("mqtt in", "mqtt out")]
    assert len(mqtt_nodes) >= 2
    for node in mqtt_nodes:
        wanted = node["topic"].replace("box1", "+")
        assert any(_matches(wanted, t) for t in topics), node["topic"]
    functions = " ".join(n.get("func", "") for n in flow if n.get("type") == "function")
    for key in ("clip_url", "ratio", "machine"):
        assert key in functions


# The demo ------------------------------------------------------------------------------


def test_demo_web_view_screenshot(chromium: WebDriver, tmp_path: Path) -> None:
    """`edge-monitor demo --web` as a person runs it; the page after its four alarms."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "edge_monitor.cli", "demo", "--web", "--web-port",
               str(port), "--web-hold", "120", "--broker", "mosquitto"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    output = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "stays up" in line:
                break
        text = "".join(output)
        assert "Result: every injected fault raised an alarm" in text, text
        _open(chromium, f"http://127.0.0.1:{port}/")
        assert len(_alarm_rows(chromium)) == 4, text  # the demo's four faults, each one alarm
        assert wait_for(lambda: (seen := chromium.execute_script(IMAGES_LOADED)) and all(seen),
                        "the spectrograms")
        assert _points(chromium) > 100
        chromium.set_window_size(1100, 1250)  # the whole page: timeline and four alarms
        chromium.save_screenshot(str(screenshot_path(tmp_path, "web_view.png")))
    finally:
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
    assert demo.returncode == 0, "".join(output) + rest
