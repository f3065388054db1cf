"""`edge-monitor devices` lists real PortAudio inputs, or says clearly that there are none."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_monitor.cli import devices

# The subcommand alone, in a fresh process (PortAudio lists devices once per process).
RUN_DEVICES = (
    "import argparse, sys; from edge_monitor.cli import devices; "
    "sys.exit(devices.run(argparse.Namespace()))"
)


def test_lists_the_pulseaudio_input_and_marks_the_default(pulse, capsys) -> None:
    assert devices.run(argparse.Namespace()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["index", "name", "host", "api", "channels", "rate_hz"]
    rows = {line[1:].split()[1]: line for line in out[1:]}
    assert "pulse" in rows and rows["pulse"].split()[2] == "ALSA"
    assert sum(line.startswith("*") for line in out[1:]) == 1


def test_no_inputs_is_a_clear_message_and_exit_1(tmp_path: Path) -> None:
    if Path("/dev/snd").exists():
        pytest.skip("this machine has sound cards, so it always has inputs")
    # No sound card and no reachable PulseAudio server: PortAudio sees no input at all.
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/no-server"}
    done = subprocess.run(
        [sys.executable, "-c", RUN_DEVICES],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no audio input devices found" in done.stderr
