"""Authentication, ACL and TLS against a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from edge_monitor.config.sections import MqttSection
from edge_monitor.mqtt.client import MqttClient
from edge_monitor.mqtt.topics import AlarmEvent, BundleStatus, new_id, utc_now

WAIT_S = 15.0
DEVICE = "test-box"  # the password broker's device user, named after the device (see the ACL)
ROOT = f"edge-monitor/{DEVICE}"


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_client(settings: MqttSection, started: list[MqttClient], journal: Path) -> MqttClient:
    client = MqttClient(settings, DEVICE, journal, ["pump"])
    client.start()
    started.append(client)
    return client


@pytest.fixture
def started():
    clients: list[MqttClient] = []
    yield clients
    for client in clients:
        client.stop(flush_timeout_s=0)


def settings_for(broker, port: int | None = None, **overrides) -> MqttSection:
    values = dict(host=broker.host, port=port or broker.port, reconnect_min_delay_s=0.2,
                  reconnect_max_delay_s=0.5, ha_discovery=False)
    values.update(overrides)
    return MqttSection(**values)


def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(password + "\n")
    return path


def test_client_without_credentials_is_refused(mosquitto_auth, started, tmp_path):
    client = start_client(settings_for(mosquitto_auth), started, tmp_path / "j.sqlite3")
    wait_until(lambda: client.stats().last_error is not None, "the broker's refusal")
    assert "refused" in client.stats().last_error
    assert not client.connected


def test_client_with_wrong_password_is_refused(mosquitto_auth, started, tmp_path):
    settings = settings_for(mosquitto_auth, username=DEVICE,
                            password_file=password_file(tmp_path, "wrong"))
    client = start_client(settings, started, tmp_path / "j.sqlite3")
    wait_until(lambda: client.stats().last_error is not None, "the broker's refusal")
    assert not client.connected


def test_client_with_credentials_is_accepted_and_ops_sees_its_alarm(
    mosquitto_auth, mqtt_recorder, started, tmp_path
):
    ops = mqtt_recorder(mosquitto_auth, ["edge-monitor/#"], username="ops")
    password = mosquitto_auth.users[DEVICE]
    settings = settings_for(mosquitto_auth, username=DEVICE,
                            password_file=password_file(tmp_path, password))
    client = start_client(settings, started, tmp_path / "j.sqlite3")
    now = utc_now()
    client.publish_event(AlarmEvent("new", new_id(), "pump", now, now, 2.0, 1.0, "m1", "b1"))
    [event] = ops.wait_topic(f"{ROOT}/machines/pump/events")
    assert json.loads(event.payload)["type"] == "new"
    assert ops.on(f"{ROOT}/availability")[-1].payload == b"online"
    # The ACL lets a box report its bundle (retained) too.
    client.publish_bundle(BundleStatus({"origin": "builtin"}, None, now))
    ops.wait_topic(f"{ROOT}/bundle")
    later = mqtt_recorder(mosquitto_auth, [f"{ROOT}/bundle"], username="ops")
    [report] = later.wait_topic(f"{ROOT}/bundle")
    assert report.retain and json.loads(report.payload)["running"] == {"origin": "builtin"}


def test_ops_command_reaches_the_device_and_the_reply_reaches_ops(
    mosquitto_auth, mqtt_recorder, started, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGE_MONITOR_MQTT_PASSWORD", mosquitto_auth.users[DEVICE])
    settings = settings_for(mosquitto_auth, username=DEVICE,
                            password_env="EDGE_MONITOR_MQTT_PASSWORD")
    client = MqttClient(settings, DEVICE, tmp_path / "j.sqlite3", ["pump"])
    client.commands.register("status", lambda command: {"machines": ["pump"]})
    client.start()
    started.append(client)
    wait_until(lambda: client.connected, "the device to connect")
    ops = mqtt_recorder(mosquitto_auth, [f"{ROOT}/cmd/result"], username="ops")
    ops.publish(f"{ROOT}/cmd/status", json.dumps({"request_id": "ops-1"}))
    [reply] = ops.wait_topic(f"{ROOT}/cmd/result")
    assert json.loads(reply.payload) == {
        "request_id": "ops-1", "command": "status", "ok": True, "result": {"machines": ["pump"]}
    }


EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl("req", "-x509", *EC_KEY, "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", str(key), "-out", str(cert))
    return key, cert


def make_signed(directory: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    openssl("req", *EC_KEY, "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1, a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    server = make_signed(directory, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = make_signed(directory, "client", ca, "DNS:test-box")
    other_ca = make_ca(directory, "other-ca")
    return {"ca": ca[1], "server_key": server[0], "server_cert": server[1],
            "client_key": client[0], "client_cert": client[1], "other_ca": other_ca[1]}


def test_tls_with_client_certificate(mosquitto_factory, mqtt_recorder, started, tmp_path, pki):
    broker = mosquitto_factory(tls_files=(pki["ca"], pki["server_cert"], pki["server_key"]))
    recorder = mqtt_recorder(broker, [f"{ROOT}/availability"])  # plain loopback listener
    settings = settings_for(broker, port=broker.tls_port, tls=True,
                            tls_ca_file=pki["ca"], tls_cert_file=pki["client_cert"],
                            tls_key_file=pki["client_key"])
    client = start_client(settings, started, tmp_path / "j.sqlite3")
    recorder.wait_for(lambda ms: any(m.payload == b"online" for m in ms), "online over TLS")
    assert client.connected


def test_tls_refuses_a_broker_signed_by_another_ca(mosquitto_factory, started, tmp_path, pki):
    broker = mosquitto_factory(tls_files=(pki["ca"], pki["server_cert"], pki["server_key"]))
    settings = settings_for(broker, port=broker.tls_port, tls=True,
                            tls_ca_file=pki["other_ca"], tls_cert_file=pki["client_cert"],
                            tls_key_file=pki["client_key"])
    client = start_client(settings, started, tmp_path / "j.sqlite3")
    wait_until(lambda: client.stats().last_error is not None, "the failed TLS handshake")
    assert "TLS" in client.stats().last_error
    assert not client.connected
