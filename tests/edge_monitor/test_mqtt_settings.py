"""MqttSettings: every bad value is a ConfigError naming the field and the fix."""

from __future__ import annotations

import pytest

from edge_monitor.core.errors import ConfigError
from edge_monitor.mqtt.client import MqttSettings


def make(tmp_path, **overrides) -> MqttSettings:
    values = {"device_id": "box1", "journal_path": tmp_path / "j.sqlite3", **overrides}
    return MqttSettings(**values)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"device_id": "box/1"}, "mqtt.device_id"),
        ({"prefix": "a/+/b"}, "mqtt.prefix"),
        ({"port": 0}, "mqtt.port"),
        ({"host": ""}, "mqtt.host"),
        ({"keepalive_s": 1}, "mqtt.keepalive_s"),
        ({"username": "u", "password_file": "/no/such/file"}, "mqtt.password_file"),
        ({"password_env": "X"}, "mqtt.username"),
        ({"username": "u", "password_env": "X", "password_file": "/etc/hostname"}, "only one"),
        ({"tls": True, "tls_cert_file": "/etc/hostname"}, "tls_key_file"),
        ({"tls_ca_file": "/etc/hostname"}, "tls: true"),
        ({"reconnect_min_delay_s": 5, "reconnect_max_delay_s": 1}, "reconnect"),
        ({"journal_max_events": 0}, "mqtt.journal_max_events"),
        ({"commands_allowed": ("status", "format-disk")}, "format-disk"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as caught:
        make(tmp_path, **overrides)
    assert fragment in str(caught.value)


def test_password_from_file_or_environment(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\nignored\n")
    assert make(tmp_path, username="u", password_file=secret).password() == "s3cret"
    monkeypatch.setenv("MQTT_PW", "from-env")
    assert make(tmp_path, username="u", password_env="MQTT_PW").password() == "from-env"
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(ConfigError, match="MQTT_PW"):
        make(tmp_path, username="u", password_env="MQTT_PW").password()
    assert make(tmp_path).password() is None
