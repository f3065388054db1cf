"""`check` and `run` go one validation path (edge_monitor.daemon.assemble): what `run`
refuses, `check` refuses with the same line naming the key; what `check` passes, `run` starts.
Issue 12's examples, one test each."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_support import small_config, synth, write_config, write_flac
from disk_support import mounted_tmpfs

from edge_monitor import cli


def refusal(command: str, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`edge-monitor COMMAND -c path`: assert exit 2 and return its one error line."""
    assert cli.main([command, "-c", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def both_refuse(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`check` and `run` refuse `path` with the same line; returns it."""
    line = refusal("check", path, capsys)
    assert refusal("run", path, capsys) == line
    return line


def config_file(tmp_path: Path, **overrides: object) -> Path:
    clip = write_flac(tmp_path / "normal.flac", synth(2.0))
    return write_config(tmp_path, small_config(tmp_path, [clip], **overrides))


@contextlib.contextmanager
def unwritable_dir(path: Path) -> Iterator[Path]:
    """A directory this user cannot write: mode 0555, or for root (whom modes do not stop)
    a read-only tmpfs mounted on it."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with mounted_tmpfs(path, "ro,size=64k"):
        yield path


def test_a_state_dir_that_is_a_file(tmp_path, capsys):
    line = both_refuse(config_file(tmp_path, state_dir="/etc/passwd"), capsys)
    assert "state_dir = '/etc/passwd' is not a directory" in line


def test_a_state_dir_under_a_file_cannot_be_created(tmp_path, capsys):
    line = both_refuse(config_file(tmp_path, state_dir="/etc/passwd/state"), capsys)
    assert "state_dir = '/etc/passwd/state' cannot be created: '/etc/passwd' is not a " \
        "directory" in line


def test_a_state_dir_that_is_not_writable(tmp_path, capsys):
    with unwritable_dir(tmp_path / "ro") as ro:
        line = both_refuse(config_file(tmp_path, state_dir=str(ro)), capsys)
    assert f"state_dir = '{ro}' is not writable by user" in line and "chown" in line


def test_a_missing_state_dir_that_cannot_be_created(tmp_path, capsys):
    with unwritable_dir(tmp_path / "ro") as ro:
        line = both_refuse(config_file(tmp_path, state_dir=str(ro / "state")), capsys)
    assert f"state_dir = '{ro}/state' does not exist, and user" in line
    assert f"cannot create it in '{ro}'" in line and "install -d" in line


def test_a_missing_state_dir_is_announced_by_check_and_created_by_run(tmp_path, capsys):
    state = tmp_path / "new" / "state"
    path = config_file(tmp_path, state_dir=str(state))
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"state_dir {state} (missing: run creates it)" in out
    assert f"alarm_audio.dir {state}/clips (missing: run creates it)" in out
    assert not (tmp_path / "new").exists()  # check writes nothing
    assert cli.main(["run", "-c", str(path)]) == 0  # replays its two seconds and ends
    assert state.is_dir() and (state / "clips").is_dir() and (state / "enrol-inbox").is_dir()
    assert cli.main(["check", "-c", str(path)]) == 0
    assert f"state_dir {state} (exists)" in capsys.readouterr().out


def test_an_alarm_audio_dir_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "clips.txt"
    afile.write_text("not a directory\n")
    line = both_refuse(config_file(tmp_path, alarm_audio={"dir": str(afile)}), capsys)
    assert f"alarm_audio.dir = '{afile}' is not a directory" in line
    # Clips off: the directory is not used, so not checked.
    assert cli.main(["check", "-c", str(config_file(
        tmp_path, alarm_audio={"dir": str(afile), "enabled": False}))]) == 0


def test_an_import_dir_that_is_a_file(tmp_path, capsys):
    line = both_refuse(config_file(tmp_path, enrolment={"import_dir": "/etc/passwd"}), capsys)
    assert "enrolment.import_dir = '/etc/passwd' is not a directory" in line


def test_an_unknown_allowed_command(tmp_path, capsys):
    path = config_file(tmp_path, mqtt={"enabled": True, "commands_allowed": ["status", "rm"]})
    line = both_refuse(path, capsys)
    assert "mqtt.commands_allowed names unknown command(s) rm" in line


def test_a_state_dir_too_long_for_the_control_socket(tmp_path, capsys):
    state = tmp_path / ("s" * 120)
    line = both_refuse(config_file(tmp_path, state_dir=str(state)), capsys)
    assert f"state_dir = '{state}': control socket path" in line and "shorter state_dir" in line


def test_an_absent_named_input_device(tmp_path, capsys):
    path = config_file(tmp_path, source={"kind": "sounddevice", "device": "USB Mic 7f3a"})
    line = refusal("check", path, capsys)
    assert "source.device = 'USB Mic 7f3a' is not present" in line
    assert "`edge-monitor devices` lists the inputs" in line


def test_a_huge_absent_device_name_is_quoted_short(tmp_path, capsys):
    """Found by tools/fuzz.py (config-near): a 9000-character name was quoted in full."""
    path = config_file(tmp_path, source={"kind": "sounddevice", "device": "M" * 9000})
    line = refusal("check", path, capsys)
    assert "source.device = 'MMM" in line and "is not present" in line
    assert len(line) < 1000


def test_the_default_input_device_is_reported(tmp_path, capsys):
    path = config_file(tmp_path, source={"kind": "sounddevice"})
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sounddevice input" in out
    if "none visible now" in out:  # a box with no microphone: said, with what to run
        assert "run reports a fault until one appears" in out
        assert "`edge-monitor devices` lists the inputs" in out


def test_a_bundle_window_of_1e9_s_is_refused_by_check_as_by_run(tmp_path, capsys):
    """`check` builds the processing loop `run` builds (every machine's window buffers), so
    a window that cannot be held is refused by both, naming window_s, before a thread starts
    (not a 58 TiB allocation in `run` only)."""
    from test_daemon_bundle import make_bundle

    make_bundle(tmp_path)
    manifest_path = tmp_path / "bundle" / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    for spec in manifest["models"].values():
        spec["window_s"] = 1e9
    manifest_path.write_text(yaml.safe_dump(manifest))
    path = write_config(tmp_path, small_config(
        tmp_path, None, source={"kind": "sounddevice"},
        model={"bundle": str(tmp_path / "bundle")}, machines=[{"name": "fan"}],
        windows={"window_s": None, "hop_s": 0.5}), "big.yaml")
    assert "window_s" in both_refuse(path, capsys)


@pytest.mark.parametrize(("overrides", "words"), [
    ({"state_dir": "/tmp/a\x00b"}, "state_dir = '/tmp/a\\x00b': the path contains a NUL byte"),
    ({"mqtt": {"enabled": True, "client_id": "c" * 70_000}}, "mqtt.client_id"),
    ({"mqtt": {"enabled": True, "host": "h" * 300_000}}, "mqtt.host"),
])
def test_values_run_once_tracebacked_on_are_refused_by_both(tmp_path, capsys, overrides, words):
    line = both_refuse(config_file(tmp_path, **overrides), capsys)
    assert words in line and len(line) < 600
