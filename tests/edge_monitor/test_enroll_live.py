"""Live enrolment: `edge-monitor enroll --seconds` records from the running daemon's own
PulseAudio stream (no second stream), the machine shows `enrolling` meanwhile, and the new
bank is swapped in without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_support import DaemonThread, small_config, status_of, write_config, write_flac
from enroll_support import GATE, NEW_SPEC, RATE, machine_audio, prelearn

from edge_monitor.enrolment.control import daemon_running, socket_path

pytestmark = pytest.mark.slow


def test_live_enrolment_from_the_daemons_stream(tmp_path, pulse):
    new_sound = np.concatenate([np.zeros(RATE // 2, np.float32), machine_audio(NEW_SPEC, 20.0)])
    clip = write_flac(tmp_path / "new.flac", new_sound)
    config = small_config(
        tmp_path, None,
        source={"kind": "sounddevice", "device": pulse.device, "block_s": 0.05, "reopen_s": 0.2},
        faults={"silence_s": 5, "no_audio_s": 3.0},
        learning={"seconds": 10, "scoring": "dads"},
        # A 4 s recording keeps the test short; the default gate asks for 20 s.
        enrolment={"min_seconds": GATE.min_seconds, "min_windows": GATE.min_windows},
    )
    config_path = write_config(tmp_path, config)
    prelearn(config_path)
    daemon = DaemonThread(config_path)
    seen: list[str] = []
    player = None
    try:
        daemon.wait_until(lambda s: daemon_running(socket_path(tmp_path / "state")),
                          "the control socket")
        before = daemon.daemon.processor.snapshot()["machines"]["pump"]["bank_version"]
        assert daemon.daemon.enrolment.manager.gate == GATE
        player = pulse.play_async(clip)
        daemon.wait_until(lambda s: s["windows"] > 2, "audio from PulseAudio")
        enrol = subprocess.Popen(
            [sys.executable, "-m", "edge_monitor.cli", "enroll", "-c", str(config_path),
             "--machine", "pump", "--seconds", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 60
        while enrol.poll() is None and time.monotonic() < deadline:
            seen.append(status_of(daemon.daemon.processor.snapshot()))
            time.sleep(0.05)
        out, err = enrol.communicate(timeout=10)
        assert enrol.returncode == 0, err
        result = json.loads(out)
        after = daemon.wait_until(
            lambda s: s["machines"]["pump"]["bank_version"]
            == result["new_versions"]["logmel-stats"], "the enrolled bank in service")
    finally:
        if player is not None:
            player.kill()
            player.wait()
        assert daemon.stop() == 0
    assert "enrolling" in seen
    assert result["old_versions"] == {"logmel-stats": before}
    assert result["windows"] >= 3 and result["quality"]["windows"] == 4
    assert status_of(after) != "enrolling"
    assert after["dropped_chunks"] == 0
    audit = daemon.daemon.enrolment.manager.audit.read()
    assert audit[-1]["source"] == "live" and audit[-1]["outcome"] == "done"
    assert audit[-1]["who"].startswith("local:")
