"""Config loading: defaults, every problem reported with file, line, key and fix, exit code 2."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_monitor import cli
from edge_monitor.config.loader import load_config
from edge_monitor.config.sections import Config, QualityGateConfig
from edge_monitor.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "edge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_empty_file_gives_the_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert config.windows.hop_s == 1.0 and config.windows.window_s is None
    assert config.model.bundle is None and config.model.providers == ["CPU"]
    assert [m.name for m in config.machines] == ["machine"]


def test_example_config_is_valid_and_lists_every_key():
    example = REPO / "conf" / "edge-monitor.yaml"
    config = load_config(example)
    assert config == Config()
    text = example.read_text()
    for section in Config.model_fields:
        assert f"\n{section}:" in text, section
        sub = getattr(config, section)
        for key in getattr(type(sub), "model_fields", {}):
            assert f" {key}:" in text, f"{section}.{key} is not documented in the example"


def test_every_problem_is_one_line_with_line_number_key_and_value(tmp_path):
    path = write(tmp_path, """\
device_id: box/1
source:
  chanels: 2
decision:
  k: 7
  n: 5
  false_alarm_rate: 2
mqtt:
  port: 99999
""")
    lines = problems(path)
    text = "\n".join(lines)
    assert "(5 problems)" in lines[0] and len(lines) == 6
    assert f"{path}:1: device_id = 'box/1'" in text
    assert f"{path}:3: source.chanels: unknown key; valid keys here are" in text
    assert "channels" in text  # the fix names the key that was meant
    assert f"{path}:7: decision.false_alarm_rate = 2" in text
    assert f"{path}:9: mqtt.port = 99999" in text
    # The cross-field rule of `decision` is reported too, although a field of it was bad.
    assert "decision.k (7) is larger than decision.n (5)" in text


def test_cross_field_rules(tmp_path):
    text = "\n".join(problems(write(tmp_path, """\
source:
  kind: replay
  channels: 1
machines:
  - {name: pump, channel: 1}
  - {name: pump, channel: 0, bundle_machine: other}
windows: {window_s: 2, hop_s: 3}
mqtt:
  password_env: NOT_SET_ANYWHERE_42
""")))
    assert "source.replay.paths is empty" in text
    assert "hop_s (3.0) is longer than windows.window_s (2.0)" in text
    assert "names ['pump'] are used twice" in text
    assert "mqtt.username is not" in text


def test_machine_channel_must_exist_and_names_must_be_topic_safe(tmp_path):
    text = "\n".join(problems(write(tmp_path, """\
machines:
  - name: "pump 1"
  - name: fan
    channel: 2
""")))
    assert "machines.0.name = 'pump 1'" in text
    text = "\n".join(problems(write(tmp_path, "machines:\n  - {name: fan, channel: 2}\n")))
    assert "machines.0.channel = 2 but source.channels = 1" in text


def test_missing_files_are_named_and_relative_paths_start_at_the_config(tmp_path):
    (tmp_path / "clips").mkdir()
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    config = load_config(write(tmp_path, """\
state_dir: state
source: {kind: replay, replay: {paths: [a.wav]}}
alarm_audio: {dir: clips}
"""))
    assert config.state_dir == tmp_path / "state"
    assert config.source.replay.paths == [audio]
    assert config.clip_dir == tmp_path / "clips"
    text = "\n".join(problems(write(tmp_path, """\
model: {bundle: nowhere}
source: {kind: replay, replay: {paths: [gone.flac]}}
""")))
    assert f"model.bundle = '{tmp_path / 'nowhere'}': no such file or directory" in text
    assert "source.replay.paths.0" in text


def test_password_file_comes_from_the_systemd_credentials_directory(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load_config(write(tmp_path, "mqtt: {username: box, password_file: mqtt_password}\n"))
    assert config.mqtt.password() == "s3cret"
    monkeypatch.setenv("EDGE_TEST_PW", "from-env")
    config = load_config(write(tmp_path, "mqtt: {username: box, password_env: EDGE_TEST_PW}\n"))
    assert config.mqtt.password() == "from-env"


def test_yaml_syntax_errors_name_the_line(tmp_path):
    lines = problems(write(tmp_path, "source:\n  kind: [replay\nmachines: 3\n"))
    assert len(lines) == 1 and "not valid YAML" in lines[0] and ":3" in lines[0]
    lines = problems(write(tmp_path, "- just\n- a list\n"))
    assert "top level must be a mapping" in lines[0]


def test_check_command_exits_2_naming_the_key_and_0_when_valid(tmp_path, capsys, caplog):
    bad = write(tmp_path, "decision:\n  cooldown_s: -1\n")
    assert cli.main(["check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "decision.cooldown_s = -1" in err and f"{bad}:2" in err
    good = write(tmp_path, f"state_dir: {tmp_path / 'state'}\n", "good.yaml")
    with caplog.at_level(logging.INFO, "edge_monitor.daemon"):
        assert cli.main(["check", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    amount = "300 s of usable audio (30 windows of 10 s)"
    assert "OK" in out and f"learns from the next {amount}" in out
    assert f"learning from the next {amount}" in caplog.text  # the daemon says the same
    assert not (tmp_path / "state").exists()  # check writes nothing
    assert cli.main(["check", "-c", str(tmp_path / "absent.yaml")]) == 2


def test_check_refuses_what_run_would_refuse(tmp_path, capsys):
    # One validation path: a command name the daemon does not know, a password file that
    # is a directory (unreadable at connect), both refused by `check` as by `run`.
    unknown = write(tmp_path, f"state_dir: {tmp_path}\nmqtt:\n  commands_allowed: [format-disk]\n")
    assert cli.main(["check", "-c", str(unknown)]) == 2
    err = capsys.readouterr().err
    assert "format-disk" in err and "mqtt.commands_allowed" in err
    (tmp_path / "secret-dir").mkdir()
    unreadable = write(tmp_path, f"state_dir: {tmp_path}\nmqtt:\n  username: box\n"
                       f"  password_file: {tmp_path / 'secret-dir'}\n", "unreadable.yaml")
    assert cli.main(["check", "-c", str(unreadable)]) == 2
    assert "mqtt.password_file" in capsys.readouterr().err


def test_enrolment_section_sets_the_gate_and_is_validated(tmp_path):
    config = load_config(write(tmp_path, """\
enrolment: {min_seconds: 8, min_windows: 3, keep_versions: 2, session_expiry_s: 60}
"""))
    assert config.enrolment.gate() == QualityGateConfig(min_seconds=8.0, min_windows=3)
    assert config.enrolment.keep_versions == 2 and config.enrolment.session_expiry_s == 60.0
    lines = problems(write(tmp_path, """\
enrolment:
  min_windows: 1
  keep_versions: 1
  expiry: 5
""", "bad.yaml"))
    assert len(lines) == 4
    assert any(":2: enrolment.min_windows = 1:" in line for line in lines)
    assert any(":3: enrolment.keep_versions = 1:" in line for line in lines)
    assert any(":4: enrolment.expiry: unknown key" in line for line in lines)
