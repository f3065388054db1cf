"""`edge-monitor demo` end to end: synthetic machine, daemon, private mosquitto, subscriber."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from edge_monitor.cli import main
from edge_monitor.core.errors import BadInputError
from edge_monitor.demo.scenario import DemoSettings, run_demo

# 150 s of audio: 50 s learned, bearing at 70-85 s, imbalance at 105-120 s, normal between.
SHORT = dict(seconds=150.0, learning_s=50.0, fault_s=15.0, gap_s=20.0, tail_s=20.0)


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed: run `bash tools/setup.sh`")
def test_demo_alarms_for_each_fault_and_none_in_normal_stretches(tmp_path: Path) -> None:
    out = io.StringIO()
    keep = tmp_path / "demo"
    result = run_demo(DemoSettings(**SHORT, broker="mosquitto", keep=keep), out)
    text = out.getvalue()

    assert result.daemon_exit == 0
    assert [r.fault.kind for r in result.faults] == ["bearing", "imbalance"]
    for r in result.faults:
        assert r.alarm is not None, f"no alarm for {r.fault}:\n{text}"
        assert r.fault.start_s < r.alarm.start_s <= r.fault.end_s, text
        assert r.alarm.end_s is not None and r.alarm.end_s > r.fault.end_s
    assert result.false_alarms == [], text
    assert result.normal_windows > 20 and result.normal_windows_above == 0, text
    # What the subscriber printed came through the broker: states, events, availability.
    assert "edge-monitor/demo-box/machines/demo-pump/events  type=new" in text
    assert "edge-monitor/demo-box/machines/demo-pump/state  status=learning" in text
    assert "edge-monitor/demo-box/availability  offline" in text
    assert "Result: every injected fault raised an alarm and no normal stretch did." in text
    # --keep leaves the clip, the schedule, the learned bank and one FLAC per alarm.
    assert (keep / "machine.flac").is_file() and (keep / "schedule.csv").is_file()
    assert len(list((keep / "state").rglob("*.flac"))) == 2


def test_demo_too_short_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "60"]) == 2
    assert "give --seconds" in capsys.readouterr().err


def test_demo_options_are_checked() -> None:
    with pytest.raises(BadInputError, match="--realtime and --speed"):
        DemoSettings(realtime=True, speed=4.0)
    with pytest.raises(BadInputError, match="needs 5 windows"):
        DemoSettings(learning_s=20.0)


def test_demo_without_a_broker_shows_what_the_daemon_publishes() -> None:
    out = io.StringIO()
    settings = DemoSettings(**{**SHORT, "seconds": 110.0}, broker="none")
    result = run_demo(settings, out)
    text = out.getvalue()

    assert "broker: none (--broker none)" in text
    assert [r.fault.kind for r in result.faults] == ["bearing"]
    assert result.faults[0].alarm is not None, text
    assert result.false_alarms == [], text
    assert "edge-monitor/demo-box/machines/demo-pump/events  type=end" in text
