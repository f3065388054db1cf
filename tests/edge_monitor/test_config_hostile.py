"""Hostile config files: `check` answers each with exit 2 and one line naming the file or
key and the fix, never a traceback or a hang (issue 12's examples, one test each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_monitor import cli
from edge_monitor.config.loader import MAX_CONFIG_BYTES, MAX_NESTING

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 60  # far above a normal check; only there so a regression fails, not hangs


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `edge-monitor check -c path` in-process: assert exit 2 and return its one line."""
    assert cli.main(["check", "-c", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def check_process(path: Path) -> str:
    """The real console entry point in a child process, for inputs that could block it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "edge_monitor.cli", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=HANG_GUARD_S, env=env, check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_dev_zero_is_refused_before_reading():
    assert "/dev/zero: not a regular file" in check_process(Path("/dev/zero"))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "edge.yaml"
    os.mkfifo(fifo)
    assert f"{fifo}: not a regular file" in check_process(fifo)


def test_a_directory_is_refused(tmp_path, capsys):
    assert f"{tmp_path}: not a regular file" in check(tmp_path, capsys)


def test_a_file_over_the_size_cap_is_refused(tmp_path, capsys):
    big = write(tmp_path, "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    assert "byte limit for a config" in check(big, capsys)


def test_5000_deep_flow_nesting_is_one_line(tmp_path, capsys):
    deep = write(tmp_path, "state_dir: /tmp\nsource:\n  " + "[" * 5000 + "]" * 5000 + "\n")
    line = check(deep, capsys)
    assert f"{deep}:3: nested more than {MAX_NESTING} levels deep" in line


def test_deep_block_nesting_is_one_line(tmp_path, capsys):
    text = "".join(f"{' ' * i}k{i}:\n" for i in range(1000)) + " " * 1000 + "v: 1\n"
    line = check(write(tmp_path, text), capsys)
    assert f"nested more than {MAX_NESTING} levels deep" in line


def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path, capsys):
    dup = write(tmp_path, "state_dir: /tmp\nmqtt:\n  host: a\n  port: 1883\n  host: b\n")
    assert f"{dup}:5: mqtt.host: duplicate key (first given at line 3)" in check(dup, capsys)


def test_a_duplicate_section_is_refused(tmp_path, capsys):
    dup = write(tmp_path, "mqtt:\n  host: a\nmqtt:\n  host: b\n")
    assert f"{dup}:3: mqtt: duplicate key (first given at line 1)" in check(dup, capsys)


@pytest.mark.parametrize("key", ["state_dir", "alarm_audio.dir", "model.bundle",
                                 "mqtt.tls_ca_file"])
def test_a_nul_byte_in_a_path_names_the_key(tmp_path, capsys, key):
    *sections, leaf = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
    text += f"{'  ' * len(sections)}{leaf}: \"/tmp/a\\0b\"\n"
    line = check(write(tmp_path, text), capsys)
    assert f"{key} = '/tmp/a\\x00b': the path contains a NUL byte" in line


def test_a_5000_character_path_names_the_key(tmp_path, capsys):
    line = check(write(tmp_path, f"state_dir: /{'d' * 5000}\n"), capsys)
    assert "state_dir = '/ddd" in line and "(5001 characters)" in line
    assert "over the limit of 4096" in line


def test_huge_mqtt_strings_are_refused_in_one_short_line(tmp_path, capsys):
    line = check(write(tmp_path, f"mqtt:\n  host: {'h' * 300_000}\n"), capsys)
    assert "mqtt.host" in line and "at most 253 characters" in line and len(line) < 400
    line = check(write(tmp_path, f"mqtt:\n  client_id: {'c' * 70_000}\n"), capsys)
    assert "mqtt.client_id" in line and len(line) < 400


def test_a_nul_byte_in_the_config_path_itself(capsys):
    assert cli.main(["check", "-c", "/tmp/a\x00b.yaml"]) == 2
    assert "cannot open the config file" in capsys.readouterr().err


def test_a_validator_quoting_a_huge_value_still_gives_a_short_line(tmp_path, capsys):
    # Found by the fuzzer: the topic-prefix check quotes the whole value in its message.
    line = check(write(tmp_path, f"mqtt:\n  prefix: '{'[' * 13_000}'\n"), capsys)
    assert "mqtt.prefix" in line and "cannot be used in an MQTT topic" in line
    assert "(no '/', '+', '#' or spaces)" in line and len(line) < 800
