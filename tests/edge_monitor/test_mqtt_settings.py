"""The `mqtt:` section: every bad value is a ConfigError naming the field and the fix.

Both `check` and `run` load the config through `parse_config`, so what is refused here is
refused by `check` before the daemon ever starts.
"""

from __future__ import annotations

import pytest
import yaml

from edge_monitor.config.loader import parse_config
from edge_monitor.config.sections import MqttSection
from edge_monitor.core.errors import ConfigError


def parse(tmp_path, mqtt: dict, device_id: str = "box1"):
    text = yaml.safe_dump({"device_id": device_id, "state_dir": str(tmp_path), "mqtt": mqtt})
    return parse_config(text, "test.yaml", tmp_path)


@pytest.mark.parametrize(
    ("mqtt", "fragment"),
    [
        ({"prefix": "a/+/b"}, "mqtt.prefix"),
        ({"port": 0}, "mqtt.port"),
        ({"host": ""}, "mqtt.host"),
        ({"keepalive_s": 1}, "mqtt.keepalive_s"),
        ({"username": "u", "password_file": "/no/such/file"}, "mqtt.password_file"),
        ({"password_env": "HOME"}, "mqtt.username"),
        ({"username": "u", "password_env": "HOME", "password_file": "/etc/hostname"}, "only one"),
        ({"tls": True, "tls_cert_file": "/etc/hostname"}, "tls_key_file"),
        ({"tls_ca_file": "/etc/hostname"}, "tls: true"),
        ({"reconnect_min_delay_s": 5, "reconnect_max_delay_s": 1}, "reconnect"),
        ({"journal_max_events": 0}, "mqtt.journal_max_events"),
        ({"commands_allowed": ["status", "format-disk"]}, "format-disk"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, mqtt, fragment):
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, mqtt)
    assert fragment in str(caught.value)


def test_a_device_id_that_is_no_topic_level_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="device_id"):
        parse(tmp_path, {}, device_id="box/1")


def test_password_from_file_or_environment(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\nignored\n")
    assert MqttSection(username="u", password_file=secret).password() == "s3cret"
    monkeypatch.setenv("MQTT_PW", "from-env")
    section = MqttSection(username="u", password_env="MQTT_PW")
    assert section.password() == "from-env"
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(ConfigError, match="MQTT_PW"):
        section.password()
    assert MqttSection().password() is None
